"""The data sections of the AdaCS prostate configs on the real TRUS volumes: inter-patient US-US
pairs on one grid with the gland label, in 3D and as axial 2D slices."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_modules.paired import PairedDataModule
from data_modules.slices import SliceDataModule

pytestmark = pytest.mark.real_data
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def paired_args(config: str, shared_data: Path) -> dict:
    data = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]
    args = data["init_args"]["volumes"]["init_args"] if config.endswith("_2d.yaml") else data["init_args"]
    return dict(args, root=str(shared_data / "prostate_mr_us"))


def test_3d_config_gives_inter_patient_us_pairs(shared_data: Path):
    module = PairedDataModule(**paired_args("prostate_us_adacs.yaml", shared_data))
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    fixed_id, moving_id = batch["pair_id"][0].split("_")[:2]
    assert fixed_id != moving_id  # two patients
    assert batch["fixed"].shape == batch["moving"].shape == (1, 1, 47, 63, 44)
    assert 0.0 <= batch["fixed"].min() and batch["fixed"].max() <= 1.0  # the momentum assumes [0, 1]
    assert set(batch["fixed_label"].unique().tolist()) == {0, 1} and module.label_names == {1: "gland"}


def test_2d_config_slices_the_same_pairs(shared_data: Path):
    volumes = PairedDataModule(**paired_args("prostate_us_adacs_2d.yaml", shared_data))
    module = SliceDataModule(volumes, axis=2, positions=(0.4, 0.5))
    module.setup("fit")
    assert len(module.train_pairs) == 2 * len(volumes.train_pairs)
    batch = next(iter(module.val_dataloader()))
    assert batch["fixed"].shape == (1, 1, 47, 63) and batch["spacing"].shape == (1, 2)
    assert batch["fixed_label"].sum() > 0  # the middle slices cut through the gland
