"""ACDC reader and data module on a generated ACDC layout: ED -> ES slice pairs cropped around the
ED myocardium, the seeded patient split recorded, testing/ only for test, one-line input errors
(the real ../shared/data/ACDC counts: tests/real_data/test_acdc_data.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.acdc import ACDCDataModule
from regframe.acdc import crop_around, myocardium_centre, normalise_intensity, read_info, read_patient, slice_pairs
from regframe.errors import RegframeInputError


def test_crop_is_centred_on_the_centroid_moved_inside_and_padded_when_too_small():
    array = np.arange(20 * 10).reshape(20, 10)
    window = crop_around(array, np.array([10.0, 5.0]), 4)
    assert window.shape == (4, 4) and window[0, 0] == array[8, 3]
    assert crop_around(array, np.array([0.0, 0.0]), 4)[0, 0] == array[0, 0]  # moved inside at the border
    padded = crop_around(array, np.array([10.0, 5.0]), 14)  # 10 < 14 along axis 1: 2 zero columns each side
    assert padded.shape == (14, 14) and (padded[:, :2] == 0).all() and padded[0, 2] == array[3, 0]


def test_normalisation_maps_min_to_zero_and_the_high_percentile_to_one():
    image = np.concatenate([np.linspace(10, 110, 1000), [1e4]])
    normalised = normalise_intensity(image)
    assert normalised.min() == 0.0 and normalised.max() == 1.0 and normalised.dtype == np.float32
    assert normalised[500] == pytest.approx((image[500] - 10) / (np.percentile(image, 99.5) - 10))


def test_patient_reads_ed_es_with_header_spacing_and_slices_keep_the_apex(fake_acdc: Path):
    patient = read_patient(fake_acdc / "training" / "patient002")
    assert patient.spacing == pytest.approx((1.5, 1.25, 8.0))
    assert patient.ed_image.min() == 0.0 and patient.ed_image.max() == 1.0
    assert (patient.ed_label == 2).sum() > (patient.es_label == 2).sum()  # ES contracted
    pairs = slice_pairs(patient, 16)
    assert [p["index"] for p in pairs] == [0, 1, 2, 3]  # the apex slice 3 (no myocardium) is kept
    centre = myocardium_centre(pairs[2]["ed_label"])
    assert np.allclose(centre, [7.5, 7.5], atol=1.0)  # cropped around the ED myocardium
    assert (pairs[3]["ed_label"] == 0).all() and pairs[3]["ed_image"].shape == (16, 16)


def test_data_module_batches_split_and_test_folder(fake_acdc: Path):
    module = ACDCDataModule(str(fake_acdc), crop_size=32, val_patients=1, batch_size=2, seed=3)
    module.setup("fit")
    assert len(module.train_pairs) == 3 * 4 and len(module.val_pairs) == 4
    val_ids = module.hparams["val_patient_ids"]
    assert len(val_ids) == 1 and all(s["id"].startswith(val_ids[0]) for s in module.val_subjects)
    assert not any(s["id"].startswith(val_ids[0]) for s in module.train_subjects)
    batch = next(iter(module.train_dataloader()))
    assert batch["fixed"].shape == (2, 1, 32, 32) and batch["fixed_label"].dtype == torch.long
    torch.testing.assert_close(batch["spacing"], torch.tensor([[1.5, 1.25]] * 2))
    assert all(p.endswith("_ed") and "_es_" in p for p in batch["pair_id"])  # fixed = ES, moving = ED
    assert module.label_names[2] == "myocardium"
    assert len(module.test_dataloader().dataset) == 2 * 4
    again = ACDCDataModule(str(fake_acdc), crop_size=32, val_patients=1, seed=3)
    again.setup("fit")
    assert again.hparams["val_patient_ids"] == val_ids  # seeded


def test_tuning_split_never_touches_the_validation_patients(fake_acdc: Path):
    plain = ACDCDataModule(str(fake_acdc), crop_size=32, val_patients=1, seed=3)
    plain.setup("fit")
    tuned = ACDCDataModule(str(fake_acdc), crop_size=32, val_patients=1, tune_patients=1, seed=3)
    tuned.setup("fit")
    val_id, tune_ids = plain.hparams["val_patient_ids"][0], tuned.hparams["tune_patient_ids"]
    assert tuned.hparams["val_patient_ids"] == [val_id] and len(tune_ids) == 1 and tune_ids[0] != val_id
    patients = lambda subjects: {s["id"].split("_")[0] for s in subjects}  # noqa: E731
    assert patients(tuned.val_subjects) == set(tune_ids)
    assert patients(tuned.train_subjects) == patients(plain.train_subjects) - set(tune_ids)
    assert len(tuned.train_pairs) == 2 * 4 and len(tuned.val_pairs) == 4
    with pytest.raises(RegframeInputError, match="tune_patients"):
        ACDCDataModule(str(fake_acdc), val_patients=1, tune_patients=3).setup("fit")


def test_volumes_protocol_gives_one_padded_stack_per_patient(fake_acdc: Path):
    module = ACDCDataModule(str(fake_acdc), protocol="volumes", crop_size=32, depth=6, val_patients=1)
    module.setup("fit")
    item = module.val_dataloader().dataset[0]
    assert len(module.train_pairs) == 3 and item["fixed"].shape == (1, 32, 32, 6)
    assert (item["fixed_label"][..., 0] == 0).all()  # one padded slice at each end of the 4
    torch.testing.assert_close(item["spacing"], torch.tensor([1.5, 1.25, 8.0]))


def copy_training(fake_acdc: Path, tmp_path: Path) -> Path:
    shutil.copytree(fake_acdc / "training", tmp_path / "training")
    return tmp_path


def test_bad_input_is_one_line_naming_the_file(fake_acdc: Path, tmp_path: Path):
    with pytest.raises(RegframeInputError, match="training: folder not found"):
        ACDCDataModule(str(tmp_path / "nowhere"))
    root = copy_training(fake_acdc, tmp_path)
    with pytest.raises(RegframeInputError, match=r"testing: folder not found"):
        ACDCDataModule(str(root), val_patients=1).test_dataloader()
    with pytest.raises(RegframeInputError, match="protocol"):
        ACDCDataModule(str(root), protocol="stacks")
    with pytest.raises(RegframeInputError, match="holds only 4 patients"):
        ACDCDataModule(str(root)).setup("fit")
    (root / "training" / "patient001" / "patient001_frame05.nii.gz").unlink()
    with pytest.raises(RegframeInputError, match=r"patient001_frame05.nii.gz: file not found"):
        ACDCDataModule(str(root), val_patients=1).setup("fit")
    (root / "training" / "patient002" / "Info.cfg").write_text("ED 1\n")
    with pytest.raises(RegframeInputError, match=r"patient002/Info.cfg: expected integer 'ED:'"):
        read_info(root / "training" / "patient002" / "Info.cfg")
    (root / "training" / "patient003" / "Info.cfg").unlink()
    with pytest.raises(RegframeInputError, match=r"patient003/Info.cfg: file not found"):
        read_patient(root / "training" / "patient003")


def test_ed_es_shape_mismatch_is_refused(acdc_patient_writer, tmp_path: Path):
    write_fake_acdc_patient = acdc_patient_writer
    folder = tmp_path / "patient009"
    write_fake_acdc_patient(folder)
    write_fake_acdc_patient(tmp_path / "other" / "patient009", ed=7, es=5, shape=(40, 30, 4))
    for name in ("patient009_frame05.nii.gz", "patient009_frame05_gt.nii.gz"):
        shutil.copy(tmp_path / "other" / "patient009" / name, folder / name)
    with pytest.raises(RegframeInputError, match=r"shape \(40, 36, 4\) does not match .*frame05.nii.gz shape \(40, 30, 4\)"):
        read_patient(folder)

