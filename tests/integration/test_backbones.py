"""Every backbone snippet in experiments/backbones/ composes with the method configs it applies to:
the network it names is what gets built, and it trains (its weights change) for one step and is
validated on one batch of a tiny paired phantom (binary "gland" labels, like the prostate data).

Only config files are named here. The overrides needed for a tiny run are all listed below: the
data section's root, grid and split (``TINY_DATA``), the trainer's length (``TINY_TRAINER``) and,
for JRSS, a one-epoch segmentation pre-training so that its second epoch trains the estimator.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from regframe.cli import RegframeCLI
from regframe.features.unet import ObeliskUNet

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BACKBONES = EXPERIMENTS / "backbones"

# ----- the only overrides (besides the data root) ---------------------------------------------------
TINY_DATA = {"target_shape": [16, 16, 16], "resample_factor": 1.0, "split": [0.75, 0.25, 0.0], "val_max_pairs": 1,
             "batch_size": 2}
TINY_TRAINER = {"logger": False, "limit_train_batches": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0,
                "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
METHOD_RUNS = {  # config -> (epochs, overrides); one training step per epoch, validation after the last
    "prostate_us_adacs.yaml": (1, []),
    "prostate_weakly_supervised.yaml": (1, []),
    "prostate_jrss.yaml": (2, ["--model.init_args.seg_pretrain_epochs=1"]),  # epoch 0 segmenter, 1 estimator
}
# -----------------------------------------------------------------------------------------------------

REGISTRATION = sorted(p.name for p in BACKBONES.glob("registration_*.yaml"))
SEGMENTER = sorted(p.name for p in BACKBONES.glob("segmenter_*.yaml"))


def run(method: str, snippet: str, root: Path, tmp_path: Path) -> RegframeCLI:
    epochs, overrides = METHOD_RUNS[method]
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({
        "data": {"init_args": {**TINY_DATA, "root": str(root)}},
        "trainer": {**TINY_TRAINER, "max_epochs": epochs, "check_val_every_n_epoch": epochs,
                    "default_root_dir": str(tmp_path)}}))
    configs = [EXPERIMENTS / method, BACKBONES / snippet, tiny]
    return RegframeCLI(args=[a for c in configs for a in ("--config", str(c))] + overrides, run=False)


def snippet_network(snippet: str, part: str) -> dict:
    return yaml.safe_load((BACKBONES / snippet).read_text())["model"]["init_args"][part]


def resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class TrainedWeights(pl.Callback):
    """Keeps ``pl_module.<part>``'s parameters at the end of training (JRSS's ``on_fit_end`` may swap the
    segmenter for its EMA teacher afterwards)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.state: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in getattr(pl_module, self.part).named_parameters()}


def fit_and_compare(cli: RegframeCLI, part: str) -> bool:
    """Fit; whether every parameter of ``cli.model.<part>`` still has its initial value after training."""
    before = {k: v.detach().clone() for k, v in getattr(cli.model, part).named_parameters()}
    trained = TrainedWeights(part)
    cli.trainer.callbacks.append(trained)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return all(torch.equal(before[k], trained.state[k]) for k in before)


def params(snippets: list[str], methods: list[str]) -> list:
    return [pytest.param(m, s, id=f"{m.removesuffix('.yaml')}+{s.removesuffix('.yaml')}")
            for s in snippets for m in methods]


@pytest.mark.parametrize("method,snippet", params(REGISTRATION, list(METHOD_RUNS)))
def test_registration_backbone_trains_in_every_method(method: str, snippet: str, paired_phantom: Path,
                                                      tmp_path: Path):
    cli = run(method, snippet, paired_phantom, tmp_path)
    wanted = snippet_network(snippet, "estimator")
    assert type(cli.model.estimator) is resolve(wanted["class_path"])
    backbone = wanted["init_args"].get("backbone")
    if backbone is not None:
        assert type(cli.model.estimator.backbone) is resolve(backbone["class_path"])
    unchanged = fit_and_compare(cli, "estimator")
    assert not unchanged, f"{snippet} with {method}: the estimator did not train"
    assert cli.trainer.current_epoch == METHOD_RUNS[method][0]
    assert np.isfinite(cli.trainer.callback_metrics["val/dice"].item())


@pytest.mark.parametrize("method,snippet", params(SEGMENTER, ["prostate_jrss.yaml"]))
def test_segmenter_backbone_trains_in_jrss(method: str, snippet: str, paired_phantom: Path, tmp_path: Path):
    cli = run(method, snippet, paired_phantom, tmp_path)
    network = snippet_network(snippet, "segmenter")["init_args"]["network"]
    built = cli.model.segmenter.network
    assert type(built) is (ObeliskUNet if network is None else resolve(network["class_path"]))
    assert cli.model.segmenter.num_classes == 2
    unchanged = fit_and_compare(cli, "segmenter")
    assert not unchanged, f"{snippet}: the segmenter did not train"
    assert {"val/dice", "val/seg_dice"} <= set(cli.trainer.callback_metrics)
