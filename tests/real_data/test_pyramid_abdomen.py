"""The MIND-SSC pyramid on one real AbdomenCTCT_synth pair at full size: Dice well above the
initial overlap, few folds."""

from __future__ import annotations

import json

import pytest
import torch

from regframe.estimators.registry import build_training_free
from regframe.io import read_image, read_label
from regframe.metrics import pair_metrics


@pytest.mark.real_data
@pytest.mark.slow
def test_pyramid_mind_registers_an_abdomen_pair(shared_data):
    task = shared_data / "AbdomenCTCT_synth"
    pair = json.loads((task / "AbdomenCTCT_dataset.json").read_text())["registration_val"][0]
    fixed, moving = read_image(task / pair["fixed"]), read_image(task / pair["moving"])
    labels = [torch.as_tensor(read_label(task / pair[k].replace("imagesTr", "labelsTr")).array).long()
              for k in ("fixed", "moving")]
    f = torch.as_tensor(fixed.array).float()[None, None]
    m = torch.as_tensor(moving.array).float()[None, None]
    disp = build_training_free("pyramid_mind")(f, m)
    before = pair_metrics(*labels, torch.zeros_like(disp), spacing=fixed.spacing, hd95=False)
    after = pair_metrics(*labels, disp, spacing=fixed.spacing, hd95=False)
    assert after["dice"] > before["dice"] + 0.2
    assert after["fold_pct"] < 1.0
