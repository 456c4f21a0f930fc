"""CST for keypoint clouds: the shared self-training loop with point pseudo labels (one per keypoint
row), the label mapping through the augmentation, the per-stage step decay, and a translated toy
pair whose random-feature labels and one stage of training give a low landmark TRE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks.pseudo_labels import PseudoLabelRefresh
from callbacks.stages import SelfTrainingStages
from data_modules.points import PointCloudDataModule
from regframe.errors import RegframeInputError
from regframe.estimators.points import PointCloudEstimator
from regframe.features.graph_cnn import GraphFeatureNet
from regframe.io import write_nifti
from regframe.methods.cyclical_points import PointCyclicalSelfTraining, StageStepLR, augmented_labels
from regframe.optim.sparse_lbp import SparseLBP

SPACING = (1.75, 1.25, 1.75)
SHAPE = (40, 48, 40)
SHIFT = np.array([2.0, -2.0, 1.0])  # voxels: moving = fixed + SHIFT
SHIFT_MM = torch.tensor(SHIFT * np.array(SPACING), dtype=torch.float32)
KEYPOINTS = (300, 330, 360)


def _write_points(path: Path, points: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, points, delimiter=",", fmt="%.4f")


def clustered_keypoints(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` keypoints (voxels) in 36 tight clusters (0.3 voxel spread) 10 voxels apart: a structure
    that disjoint random subsets of the rows share, as the vessel bifurcations of real lung keypoints."""
    centres = np.stack(np.meshgrid(*[np.arange(8, size - 8, 10) for size in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    return centres[np.arange(count) % len(centres)] + rng.normal(0, 0.3, size=(count, 3))


@pytest.fixture()
def translated_pairs(tmp_path: Path) -> Path:
    """Three toy pairs in the LungCT_L2R layout, moving = fixed translated by ``SHIFT`` voxels."""
    rng = np.random.default_rng(0)
    pairs = []
    for case, keypoints in enumerate(KEYPOINTS, start=1):
        fixed, moving = f"LungCT_{case:04d}_0000", f"LungCT_{case:04d}_0001"
        for folder, points in (("keypointsTr", clustered_keypoints(rng, keypoints)),
                               ("landmarksTr", rng.uniform(8, np.array(SHAPE) - 9, size=(20, 3)))):
            _write_points(tmp_path / "data" / folder / f"{fixed}.csv", points)
            _write_points(tmp_path / "data" / folder / f"{moving}.csv", points + SHIFT)
        write_nifti(tmp_path / "data" / "masksTr" / f"{fixed}.nii.gz", np.ones(SHAPE, dtype=np.uint8),
                    np.diag([*SPACING, 1.0]))
        pairs.append({"fixed": f"./imagesTr/{fixed}.nii.gz", "moving": f"./imagesTr/{moving}.nii.gz"})
    (tmp_path / "data" / "LungCT_VAL_evaluation_config.json").write_text(json.dumps({"eval_pairs": pairs}))
    return tmp_path / "data"


def point_cst(tmp_path: Path, stages: int = 1, **kwargs) -> PointCyclicalSelfTraining:
    torch.manual_seed(0)
    estimator = PointCloudEstimator(GraphFeatureNet(k=6, channels=(16, 16), out_channels=8),
                                    SparseLBP(num_candidates=12, k=6, smooth_weight=0.5, iterations=5))
    return PointCyclicalSelfTraining(estimator, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
                                     stages=stages, epochs_per_stage=1, pseudo_label_dir=str(tmp_path / "pl"),
                                     **kwargs)


def point_data(root: Path) -> PointCloudDataModule:
    data = PointCloudDataModule(str(root), test_pair="0003", fixed_count=100, moving_count=150, batch_size=2,
                                sigma_fixed=0.02, sigma_moving_extra=0.01, disjoint=True)
    data.setup("fit")
    return data


def fit(model: PointCyclicalSelfTraining, data: PointCloudDataModule, tmp_path: Path) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=model.schedule.total_epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         reload_dataloaders_every_n_epochs=1, default_root_dir=str(tmp_path),
                         callbacks=[SelfTrainingStages(print_table=False), PseudoLabelRefresh(evaluate_stage0=False)])
    trainer.fit(model, datamodule=data)
    return trainer


def test_stage0_labels_recover_the_translation_one_per_keypoint_row(translated_pairs, tmp_path):
    data = point_data(translated_pairs)
    model = point_cst(tmp_path)
    trainer = pl.Trainer(logger=False, default_root_dir=str(tmp_path))
    trainer.datamodule = data  # what on_fit_start sees
    model._trainer = trainer
    store = model.open_pseudo_labels(trainer)
    assert store.num_pairs == 2 and store.shape == (330, 3)  # training pairs 0001 (300 rows), 0002 (330 rows)
    difficulty = model.generate_pseudo_labels(data, 0, model.random_stage0_estimator())
    assert torch.equal(difficulty, torch.zeros(2))
    labels = store.read([0, 1])
    first, second = labels[0], labels[1]
    assert torch.isnan(first[300:]).all() and torch.isfinite(first[:300]).all() and torch.isfinite(second).all()
    for pair, rows in ((first[:300], 300), (second, 330)):
        error = (pair - SHIFT_MM).norm(dim=1)  # every row starts 4.6 mm off
        assert len(error) == rows and error.median() < 1.2 and (error < 2.0).float().mean() > 0.7


def test_one_stage_of_training_keeps_the_landmark_tre_low(translated_pairs, tmp_path):
    data = point_data(translated_pairs)
    model = point_cst(tmp_path)
    trainer = fit(model, data, tmp_path)
    metrics = trainer.callback_metrics
    assert trainer.global_step == 1  # two training pairs, batch 2
    assert math.isclose(float(metrics["val/initial_tre_mm"]), float(SHIFT_MM.norm()), rel_tol=1e-4)
    initial = float(SHIFT_MM.norm())  # 4.6 mm; a few wrongly matched clusters keep the mean TRE up
    assert float(metrics["val/tre_mm"]) < 0.85 * initial and float(metrics["val/tre_keypoints_mm"]) < 0.85 * initial
    assert model.store.served_stage == 0 and math.isfinite(float(metrics["train/epe_mm"]))


def test_labels_follow_the_augmentation():
    """A label ``d`` at ``x`` becomes ``A_M (x + d) − A_F x`` at the served point ``A_F x``."""
    x = torch.tensor([[[10.0, 20.0, 30.0]]])
    d = torch.tensor([[[1.0, -2.0, 0.5]]])
    fixed_affine, moving_affine = torch.eye(4), torch.eye(4)
    fixed_affine[:3, :3] = 2 * torch.eye(3)
    fixed_affine[:3, 3] = torch.tensor([1.0, 0.0, 0.0])
    moving_affine[:3, 3] = torch.tensor([0.0, 5.0, 0.0])
    served = x * 2 + torch.tensor([1.0, 0.0, 0.0])
    target = augmented_labels(d, served, fixed_affine[None], moving_affine[None])
    assert torch.allclose(target, (x + d + torch.tensor([0.0, 5.0, 0.0])) - served)
    assert torch.allclose(augmented_labels(d, x, torch.eye(4)[None], torch.eye(4)[None]), d)


def test_stage_step_lr_decays_at_the_milestones_and_restarts_each_stage():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = StageStepLR(optimizer, steps_per_stage=60)  # the paper: /10 at epochs 40 and 52 of 60
    rates = []
    for _ in range(120):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1.0] * 40 + [0.1] * 12 + [0.01] * 8
    assert rates == pytest.approx(expected * 2)


def test_bad_settings_and_dice_request_raise(tmp_path):
    with pytest.raises(RegframeInputError, match="spline_smooth_weight"):
        point_cst(tmp_path, spline_smooth_weight=-1.0)
    with pytest.raises(RegframeInputError, match="stages"):
        point_cst(tmp_path, stages=0)
    with pytest.raises(RegframeInputError, match="evaluate_stage0"):
        point_cst(tmp_path).mean_val_dice(None, [])
