"""PairedDataModule on a tiny fixed/moving folder layout (different grids, 4-D channel-last labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.paired import PairedDataModule, split_cases
from regframe.errors import RegframeInputError
from regframe.io import write_nifti

FIXED, MOVING = (6, 7, 5), (8, 9, 7)
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])


def _write_layout(root: Path, cases: int = 6, same_patient: dict[int, int] | None = None) -> Path:
    """Case k: fixed = k (uint8 constant), moving = 10*k + a centred 6x7x5 block of 200; labels with
    1-3 channels, channel 0 = a block of ones (moving labels: plus voxel (7, k, 0), so every case is
    its own patient unless ``same_patient`` maps it to another case's label)."""
    for k in range(cases):
        name = f"obs{k:03d}.nii.gz"
        write_nifti(root / "fixed_images" / name, np.full(FIXED, k, np.uint8), AFFINE)
        moving = np.full(MOVING, 10 * k, np.uint8)
        moving[1:7, 1:8, 1:6] = 200
        write_nifti(root / "moving_images" / name, moving, AFFINE)
        channels = 1 + k % 3
        for side, shape in (("fixed", FIXED), ("moving", MOVING)):
            label = np.zeros((*shape, channels), np.float64)
            label[1:4, 1:4, 1:4, 0] = 1.0
            label[..., 1:] = 0.0
            if side == "moving":
                label[7, (same_patient or {}).get(k, k), 0, 0] = 1.0
            write_nifti(root / f"{side}_labels" / name, label, AFFINE)
    return root


@pytest.fixture()
def layout(tmp_path: Path) -> Path:
    return _write_layout(tmp_path)


def test_split_counts_fractions_and_seed():
    cases = [f"c{i}" for i in range(10)]
    parts = split_cases(cases, (6, 2, 2), seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(parts.values(), [])) == cases
    assert split_cases(cases, (6, 2, 2), seed=0) == parts != split_cases(cases, (6, 2, 2), seed=1)
    assert [len(v) for v in split_cases(cases, (0.8, 0.1, 0.1), 0).values()] == [8, 1, 1]
    assert [len(v) for v in split_cases(cases, (0.5, 0.2, 0.0), 0).values()] == [5, 2, 0]
    with pytest.raises(RegframeInputError, match="split"):
        split_cases(cases, (8, 2, 2), 0)


def test_split_keeps_the_cases_of_a_patient_together():
    cases = [f"c{i}" for i in range(12)]
    patients = {case: f"p{i // 3}" for i, case in enumerate(cases)}  # 4 patients of 3 cases
    for seed in range(5):
        parts = split_cases(cases, (6, 3, 3), seed, patients)
        assert sorted(sum(parts.values(), [])) == sorted(cases)
        assert [len(parts[p]) for p in ("train", "val", "test")] == [6, 3, 3]
        owners = {patients[c]: name for name, part in parts.items() for c in part}
        assert all(owners[patients[c]] == name for name, part in parts.items() for c in part)
    uneven = {case: ("p0" if i < 2 else case) for i, case in enumerate(cases)}  # c0, c1 one patient
    for seed in range(10):
        parts = split_cases(cases, (8, 2, 2), seed, uneven)
        assert len({name for name, part in parts.items() for c in part if c in ("c0", "c1")}) == 1
        assert sum(len(v) for v in parts.values()) == 12 and len(parts["val"]) >= 2 and len(parts["test"]) >= 2


def test_cases_with_the_same_moving_label_stay_in_one_part(tmp_path: Path):
    """Cases 1 and 4 hold the same MR gland label (one patient): never split across parts."""
    root = _write_layout(tmp_path, cases=6, same_patient={4: 1})
    for seed in range(6):
        dm = PairedDataModule(str(root), pair_kind="fixed-moving", split=(4, 1, 1), seed=seed)
        dm.setup()
        assert len({name for name, part in dm.splits.items() if {"obs001", "obs004"} & set(part)}) == 1
    plain = [PairedDataModule(str(root), pair_kind="fixed-moving", split=(4, 1, 1), seed=seed, group_patients=False)
             for seed in range(6)]
    for dm in plain:
        dm.setup()
    assert any(len({name for name, part in dm.splits.items() if {"obs001", "obs004"} & set(part)}) == 2
               for dm in plain)


def test_fixed_moving_pairs_share_the_fixed_grid(layout: Path):
    dm = PairedDataModule(str(layout), pair_kind="fixed-moving", split=(4, 1, 1))
    dm.setup()
    assert len(dm.train_subjects) == 8 and dm.train_pairs == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert dm.label_names == {1: "gland"}
    batch = next(iter(dm.val_dataloader()))
    case = dm.splits["val"][0]
    assert batch["pair_id"] == [f"{case}_{case}"]
    assert batch["fixed"].shape == batch["moving"].shape == (1, 1, *FIXED)
    k = int(case[3:])
    assert torch.allclose(batch["fixed"], torch.full_like(batch["fixed"], k / 255))
    # the centred 6x7x5 crop of the moving image is exactly its block of 200
    assert torch.allclose(batch["moving"], torch.full_like(batch["moving"], 200 / 255))
    assert batch["fixed_label"].dtype == torch.long and int(batch["fixed_label"].sum()) == 27
    assert batch["spacing"].tolist() == [[1.5, 1.5, 1.5]]


@pytest.mark.parametrize(("order", "count"), [("unordered", 6), ("ordered", 12)])
def test_inter_patient_pairs(layout: Path, order: str, count: int):
    dm = PairedDataModule(str(layout), pair_kind="moving-moving", split=(4, 2, 0), pair_order=order)
    dm.setup()
    assert len(dm.train_subjects) == 4 and len(dm.train_pairs) == count
    assert len(dm.val_pairs) == 1 and dm.test_pairs == []
    assert all(s["image"].shape == (1, *MOVING) for s in dm.train_subjects)
    assert all(s["label"].shape == (1, *MOVING) for s in dm.train_subjects)
    assert not set(dm.splits["train"]) & set(dm.splits["val"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["pair_index"].shape == (1,)


def test_target_shape_pad_and_resample(layout: Path):
    dm = PairedDataModule(str(layout), pair_kind="fixed-fixed", split=(2, 0, 0), target_shape=(8, 9, 7))
    dm.setup()
    image = dm.train_subjects[0]["image"]
    assert image.shape == (1, 8, 9, 7) and float(image[0, 0, 0, 0]) == 0.0  # zero padding
    assert dm.train_subjects[0]["spacing"].tolist() == [1.5] * 3
    dm = PairedDataModule(str(layout), pair_kind="fixed-fixed", split=(2, 0, 0), target_shape=(12, 14, 10),
                          resize="resample")
    dm.setup()
    assert dm.train_subjects[0]["image"].shape == (1, 12, 14, 10)
    assert dm.train_subjects[0]["spacing"].tolist() == pytest.approx([0.75, 0.75, 0.75])


def test_resample_factor(layout: Path):
    dm = PairedDataModule(str(layout), pair_kind="moving-moving", split=(2, 0, 0), target_shape=(8, 8, 6),
                          resample_factor=0.5)
    dm.setup()
    assert dm.train_subjects[0]["image"].shape == (1, 4, 4, 3)
    assert dm.train_subjects[0]["spacing"].tolist() == [3.0] * 3


def test_errors_name_the_file(layout: Path, tmp_path: Path):
    with pytest.raises(RegframeInputError, match="label_channel"):
        PairedDataModule(str(layout), pair_kind="fixed-fixed", split=(2, 0, 0), label_channel=None).setup()
    with pytest.raises(RegframeInputError, match="fixed_images"):
        PairedDataModule(str(tmp_path / "nowhere"), split=(1, 0, 0)).setup()
    (layout / "moving_images" / "obs005.nii.gz").unlink()
    with pytest.raises(RegframeInputError, match="obs005"):
        PairedDataModule(str(layout), split=(2, 0, 0)).setup()
    with pytest.raises(RegframeInputError, match="pair_kind"):
        PairedDataModule(str(layout), pair_kind="mr-us")


def test_metaimage_and_nrrd_folders_give_the_same_subjects(layout: Path, tmp_path: Path):
    import SimpleITK as sitk

    converted = tmp_path / "converted"
    for folder in layout.iterdir():
        for k, path in enumerate(sorted(folder.iterdir())):
            image = sitk.ReadImage(str(path))  # diagonal affine: the same world geometry in ITK
            suffix = ".mha" if k % 2 else ".nrrd"
            (converted / folder.name).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(converted / folder.name / path.name.replace(".nii.gz", suffix)))
    nifti = PairedDataModule(str(layout), pair_kind="fixed-moving", split=(4, 1, 1))
    other = PairedDataModule(str(converted), pair_kind="fixed-moving", split=(4, 1, 1))
    nifti.setup()
    other.setup()
    assert [s["id"] for s in other.train_subjects] == [s["id"] for s in nifti.train_subjects]
    for a, b in zip(nifti.train_subjects + nifti.val_subjects, other.train_subjects + other.val_subjects):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        np.testing.assert_allclose(a["affine"], b["affine"], atol=1e-9)


def test_image_stored_flipped_is_reoriented_and_other_spacing_refused(layout: Path, tmp_path: Path):
    """A moving image (and its label) stored LPS instead of RAS gives the same subjects; with
    ``pad_crop`` a different voxel spacing is an error naming the file."""
    import shutil

    import nibabel as nib

    flipped = tmp_path / "flipped"
    shutil.copytree(layout, flipped)
    flip = np.array([[-1, 0, 0, MOVING[0] - 1], [0, -1, 0, MOVING[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    for folder in ("moving_images", "moving_labels"):
        image = nib.load(str(layout / folder / "obs002.nii.gz"))
        write_nifti(flipped / folder / "obs002.nii.gz", np.asanyarray(image.dataobj)[::-1, ::-1].copy(), AFFINE @ flip)
    original = PairedDataModule(str(layout), pair_kind="moving-moving", split=(6, 0, 0))
    other = PairedDataModule(str(flipped), pair_kind="moving-moving", split=(6, 0, 0))
    original.setup()
    other.setup()
    for a, b in zip(original.train_subjects, other.train_subjects):
        torch.testing.assert_close(b["image"], a["image"])
        torch.testing.assert_close(b["label"], a["label"])

    shutil.rmtree(flipped / "moving_labels")
    write_nifti(flipped / "moving_images" / "obs003.nii.gz", np.zeros(MOVING, np.uint8), np.diag([1.5, 1.5, 2.0, 1.0]))
    with pytest.raises(RegframeInputError, match=r"moving_images/obs003.nii.gz: spacing \(1.5, 1.5, 2.0\) mm differs"):
        PairedDataModule(str(flipped), pair_kind="moving-moving", split=(6, 0, 0)).setup()


def test_inter_patient_pairs_leave_out_two_cases_of_one_patient(tmp_path: Path):
    """Cases 1, 4 and 5 are one patient: of the 6 × 5 ordered pairs, the 6 among those three go."""
    root = _write_layout(tmp_path, cases=6, same_patient={4: 1, 5: 1})
    dm = PairedDataModule(str(root), pair_kind="moving-moving", split=(6, 0, 0), pair_order="ordered")
    dm.setup()
    assert len(dm.train_subjects) == 6 and len(dm.train_pairs) == 30 - 6
    one_patient = {dm.splits["train"].index(c) for c in ("obs001", "obs004", "obs005")}
    assert not any(i in one_patient and j in one_patient for i, j in dm.train_pairs)
