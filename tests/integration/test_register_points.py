"""``regframe register --checkpoint`` with a point method: Förstner keypoints inside both masks, the
method's graph CNN + sparse LBP, the dense field on the fixed grid, and the same outputs as images.

The CT pair is synthetic: bright Gaussian blobs at random, well separated positions inside a box
mask, the moving scan the fixed one translated by ``SHIFT`` voxels (anisotropic spacing, so the mm
translation differs from the voxel one per axis). The checkpoint is the untrained default CST
point method, written as ``regframe fit`` writes it: a random graph CNN gives equal features to
the same neighbourhood in both clouds, so sparse LBP recovers the translation exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from lightning.pytorch.cli import instantiate_module

from regframe.cli import main
from regframe.io import read_displacement, read_image, write_nifti
from regframe.methods.cyclical_points import PointCyclicalSelfTraining
from regframe.preprocess import Preprocessing
from regframe.register_points import DEFAULT_FIXED_COUNT, DEFAULT_MOVING_COUNT, keypoint_cloud, recorded_cloud_sizes

SHAPE = (56, 48, 40)
SPACING = (1.0, 1.5, 2.0)  # mm per voxel
SHIFT = np.array([3, -2, 2])  # voxels: moving content = fixed content moved by SHIFT, so u(x) = SHIFT
BOX = (np.array([6, 6, 5]), np.array([50, 42, 33]))  # fixed mask [low, high) in voxels
BLOBS = 80
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = [-20.0, 10.0, 5.0]


def blob_centres(seed: int = 0) -> np.ndarray:
    """``(BLOBS, 3)`` voxel positions inside the box, at least 5.5 voxels apart along some axis (so
    the 9-voxel non-maximum suppression keeps each blob)."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < BLOBS:
        candidate = rng.uniform(BOX[0] + 3, BOX[1] - 3)
        if all(np.abs(candidate - c).max() >= 5.5 for c in centres):
            centres.append(candidate)
    return np.array(centres)


def render(centres: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """A CT-like volume: -1000 HU background plus a Gaussian blob (sigma 1 voxel) at each centre."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(np.float64)
    image = np.full(SHAPE, -1000.0)
    for centre, amplitude in zip(centres, amplitudes):
        image += amplitude * np.exp(-((grid - centre) ** 2).sum(-1) / 2.0)
    return image.astype(np.float32)


def box_mask(offset: np.ndarray) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    low, high = BOX[0] + offset, BOX[1] + offset
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 1
    return mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LungCT-style Learn2Reg folder with one pair (images, masks, corresponding keypoints (the blob
    centres) and landmarks (other points) of both scans); returns its ``Synth_dataset.json``."""
    root = tmp_path_factory.mktemp("synth")
    centres = blob_centres()
    amplitudes = np.random.default_rng(1).uniform(600.0, 1400.0, len(centres))
    landmarks = np.random.default_rng(2).uniform(BOX[0] + 2, BOX[1] - 2, (12, 3))
    for folder in ("imagesTr", "masksTr", "keypointsTr", "landmarksTr"):
        (root / folder).mkdir()
    for scan, offset in (("0000", np.zeros(3, int)), ("0001", SHIFT)):
        write_nifti(root / "imagesTr" / f"Synth_0001_{scan}.nii.gz", render(centres + offset, amplitudes), AFFINE)
        write_nifti(root / "masksTr" / f"Synth_0001_{scan}.nii.gz", box_mask(offset), AFFINE)
        np.savetxt(root / "keypointsTr" / f"Synth_0001_{scan}.csv", centres + offset, delimiter=",")
        np.savetxt(root / "landmarksTr" / f"Synth_0001_{scan}.csv", landmarks + offset, delimiter=",")
    images = [f"./imagesTr/Synth_0001_{scan}.nii.gz" for scan in ("0000", "0001")]
    spec = {"name": "Synth", "training": [{"image": image} for image in images],
            "registration_val": [{"fixed": images[0], "moving": images[1]}]}
    path = root / "Synth_dataset.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def point_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained CST point method saved as ``regframe fit`` saves it (class path, instantiator,
    the estimator's YAML, the data module's cloud sizes)."""
    estimator = {"class_path": "regframe.estimators.points.PointCloudEstimator", "init_args": {}}
    torch.manual_seed(0)
    model = instantiate_module(PointCyclicalSelfTraining, {"estimator": estimator})
    path = tmp_path_factory.mktemp("ckpt") / "points.ckpt"
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": lightning.__version__,
                "hyper_parameters": {"_class_path": "regframe.methods.cyclical_points.PointCyclicalSelfTraining",
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module",
                                     "estimator": estimator},
                "datamodule_hyper_parameters": {"fixed_count": 50, "moving_count": 100}}, path)
    return path


def scan(dataset: Path, folder: str, index: int) -> Path:
    return dataset.parent / folder / f"Synth_0001_000{index}.nii.gz"


def test_point_checkpoint_recovers_a_translation(dataset, point_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["register", str(scan(dataset, "imagesTr", 0)), str(scan(dataset, "imagesTr", 1)),
                 "--checkpoint", str(point_checkpoint), "--fixed-mask", str(scan(dataset, "masksTr", 0)),
                 "--moving-mask", str(scan(dataset, "masksTr", 1)), "--out", str(out)])
    assert code == 0
    assert "s/pair" in capsys.readouterr().out
    disp = read_displacement(out / "disp.nii.gz", SHAPE)  # (3, *S) voxels
    inside = torch.from_numpy(box_mask(np.zeros(3, int)) > 0)
    expected = torch.tensor(SHIFT, dtype=torch.float32).view(3, 1)
    torch.testing.assert_close(disp[:, inside], expected.expand(3, int(inside.sum())), atol=1e-3, rtol=0)
    # ITK transform: fixed world point p -> p + d(p) in the moving file's world (LPS), d = A[:3,:3] SHIFT here
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "disp_itk.nii.gz"))).reshape(*SHAPE[::-1], 3)
    centre = tuple(int(v) for v in (BOX[0] + BOX[1]) // 2)
    np.testing.assert_allclose(itk[centre[::-1]], np.diag([-1.0, -1.0, 1.0]) @ (np.array(SPACING) * SHIFT), atol=1e-3)
    warped = read_image(out / "warped.nii.gz").array
    fixed = read_image(scan(dataset, "imagesTr", 0)).array
    np.testing.assert_allclose(warped[inside.numpy()], fixed[inside.numpy()], atol=0.5)  # HU, float32 warp
    # regframe apply maps the fixed keypoints onto their moving positions with the written field
    keypoints = dataset.parent / "keypointsTr"
    assert main(["apply", str(out / "disp.nii.gz"), "--points", str(keypoints / "Synth_0001_0000.csv"),
                 "--points-space", "fixed", "--out", str(out / "mapped.csv")]) == 0
    np.testing.assert_allclose(np.loadtxt(out / "mapped.csv", delimiter=","),
                               np.loadtxt(keypoints / "Synth_0001_0001.csv", delimiter=","), atol=1e-3)


def test_dataset_with_masks_registers_and_evaluates_to_a_small_tre(dataset, point_checkpoint, tmp_path):
    disp_dir = tmp_path / "disp"
    assert main(["register", "--dataset", str(dataset), "--masks", "--checkpoint", str(point_checkpoint),
                 "--out", str(disp_dir)]) == 0
    assert sorted(p.name for p in disp_dir.iterdir()) == ["disp_0001_0001.nii.gz", "disp_itk_0001_0001.nii.gz"]
    scores = {}
    for name, fields, extra in (("registered", disp_dir, []), ("initial", tmp_path / "none", ["--allow-missing"])):
        fields.mkdir(exist_ok=True)
        assert main(["evaluate", "--dataset", str(dataset), "--disp-dir", str(fields), "--out",
                     str(tmp_path / f"{name}.json"), *extra]) == 0
        case = json.loads((tmp_path / f"{name}.json").read_text())["cases"][0]
        scores[name] = (case["tre"], case["tre_landmarks"])  # mm at keypoints, landmarks
    initial = float(np.linalg.norm(np.array(SPACING) * SHIFT))
    assert scores["initial"] == pytest.approx((initial, initial), abs=1e-4)
    assert max(scores["registered"]) < 1e-3


def test_cloud_sizes_come_from_the_checkpoint_and_keypoints_are_the_most_distinctive(dataset):
    assert recorded_cloud_sizes({"datamodule_hyper_parameters": {"fixed_count": 50, "moving_count": 100}}) == (50, 100)
    assert recorded_cloud_sizes({}) == (DEFAULT_FIXED_COUNT, DEFAULT_MOVING_COUNT)
    served = {"fixed_count": 1000, "moving_count": 2000, "served_fixed_count": 661, "served_moving_count": 1322}
    assert recorded_cloud_sizes({"datamodule_hyper_parameters": served}) == (661, 1322)
    centres = blob_centres()
    amplitudes = np.linspace(500.0, 1500.0, len(centres))  # distinctiveness grows with amplitude squared
    image = write_nifti(dataset.parent / "ranked.nii.gz", render(np.round(centres), amplitudes), AFFINE)
    cloud = keypoint_cloud(read_image(image), read_image(scan(dataset, "masksTr", 0)), 10, Preprocessing())
    brightest = np.round(centres[-10:]) * np.array(SPACING)  # mm
    assert sorted(map(tuple, cloud.tolist())) == sorted(map(tuple, brightest.tolist()))


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("drop, message", [
    ("both", "--fixed-mask/--moving-mask: "), ("moving", "--fixed-mask/--moving-mask: "),
    ("dataset", "--masks: ")])
def test_point_checkpoint_without_masks_is_refused_before_any_work(dataset, point_checkpoint, tmp_path, capsys,
                                                                   drop, message):
    out = tmp_path / "out"
    if drop == "dataset":
        args = ["--dataset", str(dataset)]
    else:
        args = [str(scan(dataset, "imagesTr", 0)), str(scan(dataset, "imagesTr", 1))]
        args += [] if drop == "both" else ["--fixed-mask", str(scan(dataset, "masksTr", 0))]
    assert main(["register", *args, "--checkpoint", str(point_checkpoint), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert message in err and "point method" in err
    assert not out.exists()


def test_mask_on_another_grid_is_refused(dataset, point_checkpoint, tmp_path, capsys):
    mask = read_image(scan(dataset, "masksTr", 1))
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0  # mm: same shape, other position
    for name, array, affine in (("cropped.nii.gz", mask.array[:-1], AFFINE), ("moved.nii.gz", mask.array, shifted)):
        bad = write_nifti(tmp_path / name, array.astype(np.uint8), affine)
        out = tmp_path / f"out_{name.split('.')[0]}"
        assert main(["register", str(scan(dataset, "imagesTr", 0)), str(scan(dataset, "imagesTr", 1)),
                     "--checkpoint", str(point_checkpoint), "--fixed-mask", str(scan(dataset, "masksTr", 0)),
                     "--moving-mask", str(bad), "--out", str(out)]) == 2
        assert f"{bad}: mask grid differs from its image" in one_line_error(capsys)
        assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--affine"], "--affine: not used by the point method PointCyclicalSelfTraining"),
    (["--resample-factor", "0.5"], "--resample-factor: not used by the point method"),
    (["--fixed-points", "0"], "--fixed-points 0: must be >= 1")])
def test_options_that_do_not_fit_a_point_checkpoint(dataset, point_checkpoint, tmp_path, capsys, extra, message):
    assert main(["register", str(scan(dataset, "imagesTr", 0)), str(scan(dataset, "imagesTr", 1)),
                 "--checkpoint", str(point_checkpoint), "--fixed-mask", str(scan(dataset, "masksTr", 0)),
                 "--moving-mask", str(scan(dataset, "masksTr", 1)), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in one_line_error(capsys)


def test_point_counts_need_a_point_checkpoint(dataset, tmp_path, capsys):
    assert main(["register", str(scan(dataset, "imagesTr", 0)), str(scan(dataset, "imagesTr", 1)),
                 "--method", "identity", "--moving-points", "10", "--out", str(tmp_path / "out")]) == 2
    assert "--fixed-points/--moving-points: only for a point method's --checkpoint" in one_line_error(capsys)
