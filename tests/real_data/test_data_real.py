"""Data modules on the real shared data (AbdomenCTCT_synth, prostate_mr_us); skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from data_modules.learn2reg import Learn2RegDataModule
from data_modules.paired import PairedDataModule, label_patients
from regframe.learn2reg import load_dataset_json

pytestmark = pytest.mark.real_data

DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
ABDOMEN = DATA / "AbdomenCTCT_synth" / "AbdomenCTCT_dataset.json"
PROSTATE = DATA / "prostate_mr_us"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set REGFRAME_SHARED_DATA)")


def _mean_dice(fixed: torch.Tensor, moving: torch.Tensor) -> float:
    labels = sorted(set(fixed.unique().tolist()) & set(moving.unique().tolist()) - {0})
    scores = [2 * ((fixed == k) & (moving == k)).sum() / ((fixed == k).sum() + (moving == k).sum()) for k in labels]
    return float(torch.stack(scores).mean())


def test_abdomen_json_spec():
    _need(ABDOMEN)
    spec = load_dataset_json(ABDOMEN)
    assert len(spec.training) == 20 and len(spec.registration_val) == 15
    assert spec.val_subject_ids == {f"00{i}" for i in range(21, 27)}
    assert len(spec.label_names) == 13 and spec.label_names[6] == "liver"
    assert spec.image_shape == (192, 160, 256)
    assert all(e.label is not None and e.label.is_file() for e in spec.training)


def test_abdomen_data_module_half_resolution():
    _need(ABDOMEN)
    dm = Learn2RegDataModule(str(ABDOMEN), train_subjects=["0001", "0002"], clamp=(-200, 300), scale=1 / 500,
                             resample_factor=0.5)
    dm.setup()
    assert [s["id"] for s in dm.train_subjects] == ["0001", "0002"] and dm.train_pairs == [(0, 1)]
    subject = dm.train_subjects[0]
    assert subject["image"].shape == (1, 96, 80, 128) and subject["spacing"].tolist() == [4.0] * 3
    assert -0.4 - 1e-6 <= float(subject["image"].min()) and float(subject["image"].max()) <= 0.6 + 1e-6
    val = list(dm.val_dataloader())
    assert len(val) == 15 and val[0]["pair_id"] == ["0021_0022"]
    dice = [_mean_dice(b["fixed_label"], b["moving_label"]) for b in val[:4]]
    assert 0.05 < sum(dice) / len(dice) < 0.4  # README: pre-registration Dice about 0.15-0.20


def test_abdomen_default_training_subjects_exclude_validation():
    _need(ABDOMEN)
    dm = Learn2RegDataModule(str(ABDOMEN))
    spec = load_dataset_json(ABDOMEN)
    assert len(dm._training_entries(spec)) == 14  # 20 subjects minus 0021-0026, without reading images


def test_prostate_fixed_moving_and_inter_patient():
    _need(PROSTATE)
    dm = PairedDataModule(str(PROSTATE), pair_kind="fixed-moving", split=(3, 2, 1))
    dm.setup()
    # whole patients per part (cases with the same MR gland label): a part may hold one extra case
    assert len(dm.val_pairs) >= 2 and len(dm.test_pairs) >= 1 and len(dm.train_pairs) >= 1
    assert len(dm.train_pairs) + len(dm.val_pairs) + len(dm.test_pairs) <= 6 + 2  # at most 3 cases a patient
    patients = label_patients({case: PROSTATE / "moving_labels" / f"{case}.nii.gz" for part in dm.splits.values()
                               for case in part}, 0)
    owners = {name: {patients[case] for case in part} for name, part in dm.splits.items()}
    assert not (owners["train"] & owners["val"] or owners["train"] & owners["test"] or owners["val"] & owners["test"])
    val = list(dm.val_dataloader())
    assert val[0]["fixed"].shape == val[0]["moving"].shape == (1, 1, 47, 63, 44)
    assert float(val[0]["fixed"].max()) <= 1.0
    assert set(val[0]["fixed_label"].unique().tolist()) == {0, 1}
    assert sum(_mean_dice(b["fixed_label"], b["moving_label"]) for b in val) / len(val) > 0.2  # centred MR on US overlaps

    dm = PairedDataModule(str(PROSTATE), pair_kind="fixed-fixed", split=(3, 2, 0))
    dm.setup()
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])  # whole patients: may exceed 3 and 2
    assert n_train >= 3 and n_val >= 2
    patients = label_patients({case: PROSTATE / "moving_labels" / f"{case}.nii.gz" for part in dm.splits.values()
                               for case in part}, 0)

    def inter_patient_pairs(cases: list[str]) -> int:   # unordered pairs of cases of two different patients
        return sum(patients[a] != patients[b] for i, a in enumerate(cases) for b in cases[i + 1:])

    assert len(dm.train_pairs) == inter_patient_pairs(dm.splits["train"]) > 0
    assert len(dm.val_pairs) == inter_patient_pairs(dm.splits["val"]) > 0
    assert dm.train_subjects[0]["image"].shape == (1, 47, 63, 44) and dm.train_subjects[0]["label"] is not None
