"""Lung keypoint clouds: reading the Learn2Reg LungCT layout, mm conversion, hidden correspondence,
consistent affine augmentation, leave-one-pair-out split and one-line input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.points import PointCloudDataModule
from regframe.errors import RegframeInputError
from regframe.io import write_nifti
from regframe.point_clouds import (
    CloudSampling,
    EpochSeededSampler,
    cloud_sizes,
    draw_clouds,
    find_point_pairs,
    load_point_pair,
    mm_to_voxel,
    normalised_to_mm_affine,
    point_pair_item,
    voxel_to_mm,
)
from regframe.points import apply_affine

SPACING = (1.75, 1.25, 1.75)
SHAPE = (20, 24, 22)
SHIFT = np.array([2.0, -1.0, 0.5])  # moving = fixed + SHIFT (voxels) in the toy layout


def _write_points(path: Path, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, points, delimiter=",", fmt="%.3f")


@pytest.fixture()
def lung_layout(tmp_path: Path) -> Path:
    """Three toy pairs (30, 40, 50 keypoints; 5, 6, 7 landmarks) in the LungCT_L2R layout."""
    rng = np.random.default_rng(0)
    pairs = []
    for case, (keypoints, landmarks) in enumerate([(30, 5), (40, 6), (50, 7)], start=1):
        fixed, moving = f"LungCT_{case:04d}_0000", f"LungCT_{case:04d}_0001"
        for folder, count in (("keypointsTr", keypoints), ("landmarksTr", landmarks)):
            points = rng.uniform(3, np.array(SHAPE) - 4, size=(count, 3)).round()
            _write_points(tmp_path / folder / f"{fixed}.csv", points)
            _write_points(tmp_path / folder / f"{moving}.csv", points + SHIFT)
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[2:-2, 2:-2, 2:-2] = 1
        write_nifti(tmp_path / "masksTr" / f"{fixed}.nii.gz", mask, np.diag([*SPACING, 1.0]))
        pairs.append({"fixed": f"./imagesTr/{fixed}.nii.gz", "moving": f"./imagesTr/{moving}.nii.gz"})
    (tmp_path / "LungCT_VAL_evaluation_config.json").write_text(json.dumps({"eval_pairs": pairs}))
    return tmp_path


def test_mm_is_voxel_times_spacing():
    spacing = torch.tensor(SPACING)
    voxels = torch.tensor([[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    mm = voxel_to_mm(voxels, spacing)
    assert torch.allclose(mm, torch.tensor([[0.0, 0.0, 0.0], [3.5, 5.0, 10.5]]))
    assert torch.allclose(mm_to_voxel(mm, spacing), voxels)


def test_reader_pairs_ids_spacing_and_grid(lung_layout):
    files = find_point_pairs(lung_layout)
    assert [f.pair_id for f in files] == ["0001_0001", "0002_0002", "0003_0003"]
    pair = load_point_pair(files[1])
    assert pair.fixed_keypoints.shape == (40, 3) and pair.fixed_landmarks.shape == (6, 3)
    assert torch.allclose(pair.moving_keypoints - pair.fixed_keypoints, torch.tensor(SHIFT, dtype=torch.float32))
    assert torch.allclose(pair.spacing, torch.tensor(SPACING))
    assert pair.grid_shape == SHAPE and pair.fixed_mask.sum() == 16 * 20 * 18


def test_cloud_sizes_keep_the_ratio_when_they_do_not_fit():
    assert cloud_sizes(5000, 1000, 2000, disjoint=True) == (1000, 2000)
    assert cloud_sizes(1322, 1000, 2000, disjoint=True) == (440, 881)
    assert cloud_sizes(1322, 1000, 2000, disjoint=False) == (661, 1322)
    with pytest.raises(RegframeInputError, match="fixed_count"):
        cloud_sizes(100, 0, 10, disjoint=True)


def test_disjoint_clouds_share_no_row_and_are_shuffled():
    fixed, moving = draw_clouds(100, 30, 60, disjoint=True, generator=torch.Generator().manual_seed(0))
    assert len(set(fixed.tolist()) & set(moving.tolist())) == 0
    assert len(set(fixed.tolist())) == 30 and len(set(moving.tolist())) == 60
    assert not torch.equal(fixed, fixed.sort().values)  # random order, not the file's


def test_matching_rows_by_index_does_not_give_the_correspondence(lung_layout):
    pair = load_point_pair(find_point_pairs(lung_layout)[2])
    for disjoint in (True, False):
        item = point_pair_item(pair, 0, CloudSampling(15, 30, disjoint), seed=3, evaluation=True)
        truth = item["fixed_points_in_moving"]  # where each fixed point really is in the moving scan
        by_index = item["moving_points"][: len(truth)]
        matched = ((by_index - truth).norm(dim=1) < 1e-4).float().mean()
        assert matched < 0.2
        if disjoint:  # no fixed point's partner is in the moving cloud at all
            assert torch.cdist(truth, item["moving_points"]).min() > 1e-3
        shift_mm = torch.tensor(SHIFT * SPACING, dtype=torch.float32)
        assert torch.allclose(truth - item["fixed_points"], shift_mm, atol=1e-5)


def test_moving_jitter_moves_only_the_moving_cloud_by_its_standard_deviation(lung_layout):
    pair = load_point_pair(find_point_pairs(lung_layout)[2])
    rows = len(pair.fixed_keypoints)
    exact = point_pair_item(pair, 0, CloudSampling(rows, rows, False), seed=3, evaluation=True)
    noisy = point_pair_item(pair, 0, CloudSampling(rows, rows, False, moving_jitter_mm=2.0), seed=3, evaluation=True)
    for key in ("fixed_points", "fixed_points_in_moving", "moving_landmarks"):
        assert torch.equal(exact[key], noisy[key])  # the truth is not jittered
    noise = noisy["moving_points"] - exact["moving_points"]  # same rows, same order (same seed)
    assert noise.abs().max() > 0 and abs(float(noise.std()) - 2.0) < 0.5


def test_normalised_affine_in_mm_known_answer():
    extent = torch.tensor([10.0, 20.0, 40.0])  # mm from voxel 0 to the last voxel; centre (5, 10, 20)
    shift = torch.eye(3, 4, dtype=torch.float64)
    shift[:, 3] = torch.tensor([0.1, -0.5, 1.0])  # normalised units: half-extents (5, 10, 20) mm
    assert torch.allclose(apply_affine(normalised_to_mm_affine(shift, extent), torch.zeros(1, 3, dtype=torch.float64)),
                          torch.tensor([[0.5, -5.0, 20.0]], dtype=torch.float64))
    scale = torch.eye(3, 4, dtype=torch.float64) * 2.0  # doubles distances to the grid centre
    point = torch.tensor([[6.0, 10.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(apply_affine(normalised_to_mm_affine(scale, extent), point),
                          torch.tensor([[7.0, 10.0, -20.0]], dtype=torch.float64))


def test_augmentation_maps_points_and_landmarks_of_a_side_with_its_affine(lung_layout):
    pair = load_point_pair(find_point_pairs(lung_layout)[0])
    item = point_pair_item(pair, 0, CloudSampling(10, 20, True, augmentation=(0.075, 0.05)), seed=7, evaluation=True)
    fixed_affine, moving_affine = item["fixed_affine"].double(), item["moving_affine"].double()
    assert not torch.allclose(fixed_affine, torch.eye(4, dtype=torch.float64))
    assert not torch.allclose(fixed_affine, moving_affine)  # the moving side has its own affine

    def mm(points: torch.Tensor) -> torch.Tensor:
        return voxel_to_mm(points.double(), pair.spacing)

    rows = item["fixed_point_index"]
    assert torch.allclose(item["fixed_points"].double(), apply_affine(fixed_affine, mm(pair.fixed_keypoints[rows])), atol=1e-3)
    assert torch.allclose(item["fixed_landmarks"].double(), apply_affine(fixed_affine, mm(pair.fixed_landmarks)), atol=1e-3)
    assert torch.allclose(item["moving_landmarks"].double(), apply_affine(moving_affine, mm(pair.moving_landmarks)), atol=1e-3)
    assert torch.allclose(item["fixed_points_in_moving"].double(),
                          apply_affine(moving_affine, mm(pair.moving_keypoints[rows])), atol=1e-3)
    # every moving point is the moving affine applied to some moving keypoint
    candidates = apply_affine(moving_affine, mm(pair.moving_keypoints))
    assert torch.cdist(item["moving_points"].double(), candidates).min(dim=1).values.max() < 1e-3


def test_sampler_draws_new_seeds_each_epoch_reproducibly():
    sampler = EpochSeededSampler(3, seed=1, repeats=2)
    first = list(sampler)
    assert sorted(i for i, _ in first) == [0, 0, 1, 1, 2, 2]
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    fixed_order = EpochSeededSampler(3, seed=1, shuffle=False)
    before = list(fixed_order)
    fixed_order.set_epoch(5)
    assert list(fixed_order) == before and [i for i, _ in before] == [0, 1, 2]


def test_leave_one_pair_out_split_and_batches(lung_layout):
    data = PointCloudDataModule(str(lung_layout), test_pair=2, fixed_count=10, moving_count=20, batch_size=2)
    data.setup("fit")
    assert [p.pair_id for p in data.train_pairs] == ["0001_0001", "0003_0003"]
    assert [p.pair_id for p in data.test_pairs] == ["0002_0002"] and data.val_pairs == data.test_pairs
    batch = next(iter(data.train_dataloader()))
    assert batch["fixed_points"].shape == (2, 10, 3) and batch["moving_points"].shape == (2, 20, 3)
    assert batch["spacing"].shape == (2, 3) and sorted(batch["pair_id"]) == ["0001_0001", "0003_0003"]
    assert "fixed_points_in_moving" not in batch and "fixed_mask" not in batch  # evaluation only
    assert isinstance(batch["fixed_landmarks"], list)  # 5 and 7 landmarks do not stack
    test = next(iter(data.test_dataloader()))
    assert test["fixed_points_in_moving"].shape == (1, 10, 3) and test["fixed_mask"].shape == (1, 1, *SHAPE)
    assert torch.equal(test["fixed_affine"][0], torch.eye(4))  # no augmentation when evaluating
    # counts scaled to the smallest pair (30 rows): 1000:2000 -> 15:30 (independent), 10:20 (disjoint)
    for disjoint, sizes in ((False, (15, 30)), (True, (10, 20))):
        small = PointCloudDataModule(str(lung_layout), test_pair="0001_0001", disjoint=disjoint)
        small.setup()
        assert (small.train_sampling.fixed_count, small.train_sampling.moving_count) == sizes


def test_bad_input_gives_one_line_naming_the_file(lung_layout, tmp_path):
    with pytest.raises(RegframeInputError, match="folder not found"):
        PointCloudDataModule(str(tmp_path / "absent"), test_pair=1)
    with pytest.raises(RegframeInputError, match="test_pair"):
        PointCloudDataModule(str(lung_layout), test_pair=9)
    single = tmp_path / "configs" / "one_pair.json"
    single.parent.mkdir()
    single.write_text(json.dumps({"eval_pairs": json.loads(
        (lung_layout / "LungCT_VAL_evaluation_config.json").read_text())["eval_pairs"][:1]}))
    with pytest.raises(RegframeInputError, match="one pair only"):
        PointCloudDataModule(str(lung_layout), test_pair=1, config=str(single))
    csv = lung_layout / "keypointsTr" / "LungCT_0002_0001.csv"
    csv.write_text(csv.read_text() + "1.0,2.0\n")
    data = PointCloudDataModule(str(lung_layout), test_pair=1)
    with pytest.raises(RegframeInputError) as error:
        data.setup()
    assert str(csv) in str(error.value) and "\n" not in str(error.value)
    csv.write_text("\n".join(csv.read_text().splitlines()[:-2]) + "\n")  # well formed, one row short
    with pytest.raises(RegframeInputError, match="same number of rows") as error:
        load_point_pair(find_point_pairs(lung_layout)[1])
    assert str(csv) in str(error.value)
    landmarks = lung_layout / "landmarksTr" / "LungCT_0001_0001.csv"
    landmarks.write_text(landmarks.read_text() + "5.0,6.0,500.0\n")
    _write_points(lung_layout / "landmarksTr" / "LungCT_0001_0000.csv",
                  np.loadtxt(landmarks, delimiter=",", ndmin=2) - SHIFT)
    with pytest.raises(RegframeInputError, match="1 points lie outside the"):
        load_point_pair(find_point_pairs(lung_layout)[0])
    (lung_layout / "masksTr" / "LungCT_0003_0000.nii.gz").unlink()
    with pytest.raises(RegframeInputError, match="LungCT_0003_0000.nii.gz: file not found"):
        PointCloudDataModule(str(lung_layout), test_pair=1)


@pytest.mark.real_data
def test_real_lung_pairs(shared_data):
    root = shared_data / "LungCT_L2R"
    data = PointCloudDataModule(str(root), test_pair=3, batch_size=2)
    data.setup()
    assert [p.pair_id for p in data.train_pairs] == ["0001_0001", "0002_0002"]
    pair = data.test_pairs[0]
    assert pair.grid_shape == (192, 192, 208) and torch.allclose(pair.spacing, torch.tensor(SPACING))
    assert len(pair.fixed_keypoints) == 1566 and len(pair.fixed_landmarks) == 100
    assert (data.train_sampling.fixed_count, data.train_sampling.moving_count) == (661, 1322)  # 1322 rows in 0001
    assert (data.hparams["served_fixed_count"], data.hparams["served_moving_count"]) == (661, 1322)
    batch = next(iter(data.train_dataloader()))
    assert batch["fixed_points"].shape == (2, 661, 3) and batch["moving_points"].shape == (2, 1322, 3)
    test = next(iter(data.test_dataloader()))
    truth = voxel_to_mm(pair.moving_keypoints[test["fixed_point_index"][0]], pair.spacing)
    assert torch.allclose(test["fixed_points_in_moving"][0], truth)
    initial_tre = (test["fixed_landmarks"][0] - test["moving_landmarks"][0]).norm(dim=1).mean()
    assert 1.0 < initial_tre < 40.0  # mm: the pair is not aligned, but not absurdly far apart


def test_keypoint_supervision_targets_are_the_true_displacements_under_augmentation(lung_layout):
    """The loss of an estimator that returns the true (augmented) displacement is zero; the identity's
    loss is the mean length of those displacements."""
    from regframe.estimators.points import IdentityPointEstimator, PointDisplacementEstimator
    from regframe.methods.points_keypoint_supervised import PointKeypointSupervised

    data = PointCloudDataModule(str(lung_layout), test_pair=3, fixed_count=10, moving_count=20, batch_size=2,
                                sigma_fixed=0.05, sigma_moving_extra=0.05)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    shift_mm = torch.tensor(SHIFT * SPACING, dtype=torch.float64)
    original = apply_affine(torch.linalg.inv(batch["fixed_affine"].double()), batch["fixed_points"].double())
    truth = (apply_affine(batch["moving_affine"].double(), original + shift_mm) - batch["fixed_points"]).float()

    class Oracle(PointDisplacementEstimator):
        def forward(self, fixed_points, moving_points):
            return truth

    for estimator, expected in ((Oracle(), 0.0), (IdentityPointEstimator(), float(truth.norm(dim=-1).mean()))):
        model = PointKeypointSupervised(estimator=estimator)
        model.trainer = type("Trainer", (), {"datamodule": data})()
        model.log_training_loss = lambda *args, **kwargs: None  # no Lightning trainer to log to
        assert float(model.training_step(batch, 0)) == pytest.approx(expected, abs=1e-4)
