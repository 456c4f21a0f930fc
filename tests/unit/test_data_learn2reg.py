"""Learn2Reg json parsing, pairs, preprocessing, sampling and input errors on a tiny generated data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.learn2reg import Learn2RegDataModule
from regframe.learn2reg import load_dataset_json, subject_id
from regframe.errors import RegframeInputError
from regframe.io import read_label, write_nifti

SHAPE = (8, 6, 10)
SPACING = 2.0


def _write_dataset(root: Path, subjects: int = 5, val_ids: tuple[int, ...] = (4, 5), keypoints: bool = False) -> Path:
    """Tiny Learn2Reg data set: subject k has image values k*100 + voxel index, labels 0..2."""
    affine = np.diag([SPACING] * 3 + [1.0])
    training = []
    rng = np.random.default_rng(0)
    for k in range(1, subjects + 1):
        name = f"Tiny_{k:04d}_0000.nii.gz"
        image = (k * 100 + np.arange(np.prod(SHAPE))).reshape(SHAPE).astype(np.float32)
        label = rng.integers(0, 3, SHAPE).astype(np.uint8)
        write_nifti(root / "imagesTr" / name, image, affine)
        write_nifti(root / "labelsTr" / name, label, affine)
        if keypoints:
            (root / "keypointsTr").mkdir(exist_ok=True)
            np.savetxt(root / "keypointsTr" / f"Tiny_{k:04d}_0000.csv", rng.uniform(0, 5, (3 + k, 3)), delimiter=",")
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    val = [(a, b) for i, a in enumerate(val_ids) for b in val_ids[i + 1:]]
    data = {
        "name": "Tiny",
        "labels": {"0": {"1": "organ a", "2": "organ b"}},
        "tensorImageShape": {"0": list(SHAPE)},
        "training": training,
        "registration_val": [{"fixed": f"./imagesTr/Tiny_{a:04d}_0000.nii.gz",
                              "moving": f"./imagesTr/Tiny_{b:04d}_0000.nii.gz"} for a, b in val],
    }
    path = root / "Tiny_dataset.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path)


def test_subject_id_from_learn2reg_names():
    assert subject_id("./imagesTr/AbdomenCTCT_0021_0000.nii.gz") == "0021"
    assert subject_id("/x/NLST_0001_0001.nii.gz") == "0001"
    assert subject_id("case7.nii.gz") == "case7"


def test_spec_parses_paths_labels_and_pairs(dataset: Path):
    spec = load_dataset_json(dataset)
    assert spec.root == dataset.parent.resolve()
    assert [e.id for e in spec.training] == ["0001", "0002", "0003", "0004", "0005"]
    assert spec.training[0].image == dataset.parent.resolve() / "imagesTr" / "Tiny_0001_0000.nii.gz"
    assert spec.training[0].label.name == "Tiny_0001_0000.nii.gz"
    assert [p.pair_id for p in spec.registration_val] == ["0004_0005"]
    assert spec.registration_val[0].fixed.label == spec.training[3].label
    assert spec.label_names == {1: "organ a", 2: "organ b"}
    assert spec.image_shape == SHAPE
    assert spec.val_subject_ids == {"0004", "0005"}


@pytest.mark.parametrize(("mode", "count"), [("unordered", 3), ("ordered", 6)])
def test_training_pairs_exclude_val_subjects(dataset: Path, mode: str, count: int):
    dm = Learn2RegDataModule(str(dataset), pair_order=mode)
    dm.setup("fit")
    assert [s["id"] for s in dm.train_subjects] == ["0001", "0002", "0003"]
    assert len(dm.train_pairs) == count == len(set(dm.train_pairs))
    assert all(f != m for f, m in dm.train_pairs)
    if mode == "unordered":
        assert all(f < m for f, m in dm.train_pairs)


def test_train_subjects_and_include_val(dataset: Path):
    dm = Learn2RegDataModule(str(dataset), exclude_val_subjects=False)
    assert dm.hparams["exclude_val_subjects"] is False and dm.hparams["dataset_json"] == str(dataset)
    dm.setup()
    assert len(dm.train_subjects) == 5 and len(dm.train_pairs) == 10
    dm = Learn2RegDataModule(str(dataset), train_subjects=["0002", 5])  # YAML reads 0005 as 5
    dm.setup()
    assert [s["id"] for s in dm.train_subjects] == ["0002", "0005"]
    with pytest.raises(RegframeInputError, match="0009"):
        Learn2RegDataModule(str(dataset), train_subjects=["0009"]).setup()


def test_batches_follow_the_convention(dataset: Path):
    dm = Learn2RegDataModule(str(dataset), batch_size=2, clamp=(150.0, 400.0), shift=-150.0, scale=0.01)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["fixed"].shape == batch["moving"].shape == (2, 1, *SHAPE)
    assert batch["fixed"].dtype == torch.float32
    assert batch["fixed_label"].shape == (2, 1, *SHAPE) and batch["fixed_label"].dtype == torch.long
    assert batch["spacing"].tolist() == [[SPACING] * 3] * 2
    assert batch["pair_index"].dtype == torch.long
    for index, pair_id in zip(batch["pair_index"].tolist(), batch["pair_id"]):
        f, m = dm.train_pairs[index]
        assert pair_id == f"{dm.train_subjects[f]['id']}_{dm.train_subjects[m]['id']}"
    # intensity: (clip(x, 150, 400) - 150) * 0.01 lies in [0, 2.5]; subject 1 starts at 100 -> 0
    assert float(dm.train_subjects[0]["image"].min()) == 0.0
    assert float(dm.train_subjects[2]["image"].max()) == pytest.approx(2.5)
    val = list(dm.val_dataloader())
    assert [b["pair_id"] for b in val] == [["0004_0005"]]
    assert "fixed_label" in val[0] and val[0]["moving_label"].shape == (1, 1, *SHAPE)
    assert [b["pair_id"] for b in dm.test_dataloader()] == [["0004_0005"]]


def test_subjects_loaded_once_and_shared(dataset: Path):
    dm = Learn2RegDataModule(str(dataset), exclude_val_subjects=False)
    dm.setup("fit")
    first = dm.train_subjects
    dm.setup("validate")
    assert dm.train_subjects is first
    assert dm.val_subjects[0]["image"] is dm.train_subjects[3]["image"]


def test_sampler_weights_drive_sampling(dataset: Path):
    dm = Learn2RegDataModule(str(dataset), pair_order="ordered")
    dm.setup("fit")
    dm.sampler_weights = torch.zeros(len(dm.train_pairs))
    dm.sampler_weights[4] = 1.0
    drawn = {int(b["pair_index"]) for b in dm.train_dataloader()}
    assert drawn == {4}
    assert dm.state_dict()["sampler_weights"] is dm.sampler_weights
    dm.sampler_weights = torch.ones(2)
    with pytest.raises(RegframeInputError, match="sampler_weights"):
        dm.train_dataloader()


def test_shuffle_is_seeded(dataset: Path):
    orders = []
    for _ in range(2):
        dm = Learn2RegDataModule(str(dataset), exclude_val_subjects=False, seed=3)
        dm.setup()
        orders.append([int(b["pair_index"]) for b in dm.train_dataloader()])
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(10))


def test_training_seed_changes_the_order_but_not_the_split(dataset: Path, monkeypatch: pytest.MonkeyPatch):
    def order_and_split(training_seed: int | None) -> tuple[list[int], list]:
        if training_seed is None:
            monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        else:
            monkeypatch.setenv("PL_GLOBAL_SEED", str(training_seed))
        dm = Learn2RegDataModule(str(dataset), exclude_val_subjects=False, seed=3)
        dm.setup()
        return [int(b["pair_index"]) for b in dm.train_dataloader()], dm.train_pairs

    unset, zero, one = order_and_split(None), order_and_split(0), order_and_split(1)
    assert unset[0] == zero[0]  # seed + epoch, as before training seeds entered it
    assert one[0] != zero[0] and sorted(one[0]) == list(range(10)) and one[1] == zero[1]


def test_resample_factor_halves_shape_and_doubles_spacing(dataset: Path):
    dm = Learn2RegDataModule(str(dataset), resample_factor=0.5)
    dm.setup()
    subject = dm.train_subjects[0]
    assert subject["image"].shape == (1, 4, 3, 5)
    assert subject["label"].shape == (1, 4, 3, 5) and subject["label"].dtype == torch.long
    assert set(subject["label"].unique().tolist()) <= {0, 1, 2}
    assert subject["spacing"].tolist() == [2 * SPACING] * 3
    assert np.allclose(np.diag(subject["affine"])[:3], 2 * SPACING)


def test_keypoints_are_batched_per_pair(tmp_path: Path):
    path = _write_dataset(tmp_path, keypoints=True)
    dm = Learn2RegDataModule(str(path), batch_size=2)
    dm.setup()
    assert dm.train_subjects[0]["points"].shape == (4, 3)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch["fixed_points"], list) and batch["fixed_points"][0].shape[1] == 3
    val = next(iter(dm.val_dataloader()))
    assert val["fixed_points"].shape == (1, 7, 3)


# --- errors name the file / key -------------------------------------------------------------

def _rewrite(path: Path, **changes) -> Path:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def _error(dataset: Path) -> str:
    with pytest.raises(RegframeInputError) as info:
        Learn2RegDataModule(str(dataset)).setup()
    return str(info.value)


def test_missing_json(tmp_path: Path):
    assert "missing_dataset.json" in _error(tmp_path / "missing_dataset.json")


def test_missing_json_key(dataset: Path):
    data = json.loads(dataset.read_text())
    del data["training"]
    dataset.write_text(json.dumps(data))
    message = _error(dataset)
    assert "Tiny_dataset.json" in message and "'training'" in message


def test_missing_pair_key(dataset: Path):
    _rewrite(dataset, registration_val=[{"fixed": "./imagesTr/Tiny_0004_0000.nii.gz"}])
    message = _error(dataset)
    assert "registration_val[0]" in message and "'moving'" in message


def test_missing_image_file(dataset: Path):
    (dataset.parent / "imagesTr" / "Tiny_0002_0000.nii.gz").unlink()
    message = _error(dataset)
    assert "Tiny_0002_0000.nii.gz" in message and "not found" in message and "Tiny_dataset.json" in message


def test_corrupt_nifti(dataset: Path):
    (dataset.parent / "imagesTr" / "Tiny_0003_0000.nii.gz").write_bytes(b"not a nifti file at all" * 10)
    message = _error(dataset)
    assert "Tiny_0003_0000.nii.gz" in message and "NIfTI" in message


def test_label_shape_mismatch(dataset: Path):
    write_nifti(dataset.parent / "labelsTr" / "Tiny_0001_0000.nii.gz", np.zeros((8, 6, 9), np.uint8), np.eye(4) * 2)
    message = _error(dataset)
    assert "labelsTr/Tiny_0001_0000.nii.gz" in message and "shape" in message


def test_nan_image(dataset: Path):
    image = np.zeros(SHAPE, np.float32)
    image[1, 2, 3] = np.nan
    write_nifti(dataset.parent / "imagesTr" / "Tiny_0002_0000.nii.gz", image, np.diag([SPACING] * 3 + [1.0]))
    message = _error(dataset)
    assert "Tiny_0002_0000.nii.gz" in message and "NaN" in message


def test_4d_image(dataset: Path):
    write_nifti(dataset.parent / "imagesTr" / "Tiny_0001_0000.nii.gz", np.zeros((*SHAPE, 2), np.float32),
                np.diag([SPACING] * 3 + [1.0]))
    message = _error(dataset)
    assert "imagesTr/Tiny_0001_0000.nii.gz" in message and "3-D" in message


def test_unknown_label_id(dataset: Path):
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 7
    write_nifti(dataset.parent / "labelsTr" / "Tiny_0002_0000.nii.gz", label, np.diag([SPACING] * 3 + [1.0]))
    message = _error(dataset)
    assert "labelsTr/Tiny_0002_0000.nii.gz" in message and "[7]" in message


def test_subjects_on_different_grids(dataset: Path):
    affine = np.diag([SPACING] * 3 + [1.0])
    for folder in ("imagesTr", "labelsTr"):
        write_nifti(dataset.parent / folder / "Tiny_0003_0000.nii.gz", np.zeros((8, 6, 12), np.uint8), affine)
    assert "Tiny_0003_0000.nii.gz" in _error(dataset)


def test_bad_pairs_mode(dataset: Path):
    with pytest.raises(RegframeInputError, match="pair_order"):
        Learn2RegDataModule(str(dataset), pair_order="all")


def test_reloaded_train_loader_draws_a_new_order_each_epoch(tmp_path):
    from types import SimpleNamespace

    from data_modules.phantom import PhantomDataModule

    dm = PhantomDataModule(root=str(tmp_path / "ph"), subjects=6, shape=(12, 12, 12), val_subjects=2)
    dm.setup("fit")
    orders = []
    for epoch in (0, 1, 0):
        dm.trainer = SimpleNamespace(current_epoch=epoch)
        orders.append([i for batch in dm.train_dataloader() for i in batch["pair_index"].tolist()])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(len(dm.train_pairs)))


# --- geometry: orientation and spacing across subjects ----------------------------------------

def _store_flipped(root: Path, k: int) -> None:
    """Store subject ``k`` (image, label, keypoints) as the same physical image with axes 0 and 1
    flipped (LPS instead of RAS)."""
    import nibabel as nib

    name = f"Tiny_{k:04d}_0000"
    flip = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    for folder in ("imagesTr", "labelsTr"):
        image = nib.load(str(root / folder / f"{name}.nii.gz"))
        write_nifti(root / folder / f"{name}.nii.gz", np.asanyarray(image.dataobj)[::-1, ::-1].copy(), image.affine @ flip)
    points = np.loadtxt(root / "keypointsTr" / f"{name}.csv", delimiter=",", ndmin=2)
    np.savetxt(root / "keypointsTr" / f"{name}.csv", points @ np.linalg.inv(flip)[:3, :3].T + np.linalg.inv(flip)[:3, 3],
               delimiter=",")


def test_subject_stored_flipped_is_reoriented_to_the_first(tmp_path: Path):
    original = Learn2RegDataModule(str(_write_dataset(tmp_path / "ras", keypoints=True)), exclude_val_subjects=False)
    root = tmp_path / "lps"
    flipped = _write_dataset(root, keypoints=True)
    _store_flipped(root, 3)
    dm = Learn2RegDataModule(str(flipped), exclude_val_subjects=False)
    original.setup()
    dm.setup()
    for a, b in zip(original.train_subjects, dm.train_subjects):
        for key in ("image", "label"):
            torch.testing.assert_close(b[key], a[key])
        torch.testing.assert_close(b["points"], a["points"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(b["affine"], a["affine"])


def test_oblique_subject_is_refused(dataset: Path):
    import nibabel as nib

    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    for folder in ("imagesTr", "labelsTr"):
        image = nib.load(str(dataset.parent / folder / "Tiny_0002_0000.nii.gz"))
        write_nifti(dataset.parent / folder / "Tiny_0002_0000.nii.gz", np.asanyarray(image.dataobj), rotation @ image.affine)
    message = _error(dataset)
    assert "imagesTr/Tiny_0002_0000.nii.gz: axes are rotated against" in message and "Tiny_0001_0000" in message


def test_subject_with_another_spacing_is_refused(dataset: Path):
    affine = np.diag([SPACING, SPACING, 1.5 * SPACING, 1.0])
    for folder in ("imagesTr", "labelsTr"):
        write_nifti(dataset.parent / folder / "Tiny_0003_0000.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    message = _error(dataset)
    assert "imagesTr/Tiny_0003_0000.nii.gz: spacing (2.0, 2.0, 3.0) mm differs from" in message


def test_contiguous_labels_renumber_the_json_codes_in_order(tmp_path: Path):
    dataset = _write_dataset(tmp_path)
    codes = {0: 0, 1: 21, 2: 182}  # the tiny labels 0..2 stored as LPBA40-like codes
    affine = np.diag([SPACING] * 3 + [1.0])
    originals = {}
    for k in range(1, 6):
        path = tmp_path / "labelsTr" / f"Tiny_{k:04d}_0000.nii.gz"
        label = read_label(path).array.astype(np.uint8)
        originals[k] = label
        write_nifti(path, np.vectorize(codes.get)(label).astype(np.uint8), affine)
    _rewrite(dataset, labels={"0": {"182": "brainstem", "21": "frontal"}})
    module = Learn2RegDataModule(str(dataset), contiguous_labels=True)
    module.setup()
    assert module.label_codes == [21, 182]
    assert module.label_names == {1: "frontal", 2: "brainstem"}
    subject = module.train_subjects[0]
    assert subject["id"] == "0001"
    np.testing.assert_array_equal(subject["label"][0].numpy(), originals[1])  # 21 -> 1, 182 -> 2, 0 stays

    raw = Learn2RegDataModule(str(dataset))
    raw.setup()
    assert set(torch.unique(raw.train_subjects[0]["label"]).tolist()) == {0, 21, 182}


def test_contiguous_labels_need_the_json_labels(dataset: Path):
    data = json.loads(dataset.read_text())
    del data["labels"]
    dataset.write_text(json.dumps(data))
    with pytest.raises(RegframeInputError, match="Tiny_dataset.json.*contiguous_labels"):
        Learn2RegDataModule(str(dataset), contiguous_labels=True).setup()


def test_held_out_pairs_follow_the_fixed_images_protocol():
    from data_modules.learn2reg import held_out_pairs

    assert held_out_pairs(4, 2) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert held_out_pairs(3, None) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_test_subjects_are_held_out_of_training_and_paired_for_test(tmp_path: Path):
    dataset = _write_dataset(tmp_path, subjects=7, val_ids=(6, 7))
    module = Learn2RegDataModule(str(dataset), pair_order="ordered", test_subjects=["0003", 1, "0005"], test_fixed=1)
    module.setup()
    assert [s["id"] for s in module.train_subjects] == ["0002", "0004"]
    assert [s["id"] for s in module.test_subjects] == ["0003", "0001", "0005"]
    assert module.test_pairs == [(0, 1), (0, 2)]  # 0003 fixed, 0001 and 0005 moving
    assert [s["id"] for s in module.val_subjects] == ["0006", "0007"]
    assert [b["pair_id"] for b in module.test_dataloader()] == [["0003_0001"], ["0003_0005"]]


@pytest.mark.parametrize("options, message", [
    ({"test_subjects": ["0001"]}, "at least 2"),
    ({"test_subjects": ["0001", "0002"], "test_fixed": 2}, "test_fixed"),
])
def test_bad_test_split_options_are_refused(dataset: Path, options, message):
    with pytest.raises(RegframeInputError, match=message):
        Learn2RegDataModule(str(dataset), **options)


def test_test_subjects_must_exist_and_not_be_trained_on(dataset: Path):
    with pytest.raises(RegframeInputError, match=r"Tiny_dataset.json: test_subjects \['0009'\]"):
        Learn2RegDataModule(str(dataset), test_subjects=["0001", "0009"], test_fixed=1).setup()
    with pytest.raises(RegframeInputError, match="both train_subjects and test_subjects"):
        Learn2RegDataModule(str(dataset), train_subjects=["0001", "0002"],
                            test_subjects=["0002", "0003"], test_fixed=1).setup()
