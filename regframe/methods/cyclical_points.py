"""Cyclical self-training for keypoint clouds (the CST paper's lung variant).

The loop is :class:`~regframe.methods.cyclical.SelfTrainingLoop`, shared with the image CST: stage-0
pseudo labels from a randomly re-initialised copy of the network inside the estimator, new labels
from the current network at every stage end (:class:`callbacks.pseudo_labels.PseudoLabelRefresh`),
the same stage callbacks. What is specific to points:

- Pseudo labels are displacements (mm) of every fixed keypoint row of a training pair, in the pair's
  own mm frame (no augmentation); the store holds ``(R, 3)`` per pair, ``R`` = the most keypoint
  rows of any training pair (rows past a pair's own count are NaN and never read). They are the
  estimator's output (graph CNN + sparse LBP) without refinement, as in the paper.
- The loss is the mean end-point error (mm) between the network's displacements at the served fixed
  points and their labels (looked up by ``fixed_point_index``) mapped through the served affine
  augmentation: a label ``d`` at the original fixed point ``x`` becomes ``A_M (x + d) − A_F x``.
- Validation and test: target registration error (mm) at the held-out pair's landmarks, from the
  sparse displacements interpolated at the fixed landmarks by the spline of
  :mod:`regframe.point_fields` (``val/tre_mm``), with the initial TRE and the TRE at the fixed
  keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from regframe.errors import RegframeInputError
from regframe.estimators.points import PointDisplacementEstimator
from regframe.estimators.protocols import trained_network
from regframe.methods.cyclical import SelfTrainingLoop
from regframe.methods.points_base import PointRegistrationModule
from regframe.point_clouds import CloudSampling, PointPair, voxel_to_mm
from regframe.points import apply_affine, jittered
from regframe.stages import StageLRSchedulerCallable


class StageStepLR(LambdaLR):
    """Step decay restarted at every stage: the learning rate is multiplied by ``gamma`` at each of
    the ``milestones`` (fractions of a stage; the paper: epochs 40 and 52 of 60), and reset at every
    stage start. ``steps_per_stage``: optimiser steps in one stage (given by the module)."""

    def __init__(self, optimizer: Optimizer, steps_per_stage: int, milestones: Sequence[float] = (40 / 60, 52 / 60),
                 gamma: float = 0.1) -> None:
        if steps_per_stage < 1 or any(not 0 < m < 1 for m in milestones):
            raise RegframeInputError(f"StageStepLR: need steps_per_stage >= 1 and milestones in (0, 1); got "
                                     f"{steps_per_stage}, {list(milestones)}")
        steps = [math.ceil(m * steps_per_stage) for m in milestones]
        super().__init__(optimizer, lambda step: gamma ** sum(step % steps_per_stage >= s for s in steps))


def augmented_labels(labels: Tensor, fixed_points: Tensor, fixed_affine: Tensor, moving_affine: Tensor) -> Tensor:
    """Displacements ``(B, N, 3)`` mm at the served (augmented) ``fixed_points``: the original-frame
    ``labels (B, N, 3)`` at the original points ``x = A_F⁻¹ x'`` become ``A_M (x + d) − x'``."""
    served = fixed_points.double()
    original = apply_affine(torch.linalg.inv(fixed_affine.double()), served)
    return (apply_affine(moving_affine.double(), original + labels.double()) - served).to(fixed_points.dtype)


@torch.no_grad()
def keypoint_pseudo_labels(estimator: nn.Module, pair: PointPair, sampling: CloudSampling,
                           generator: torch.Generator, device: torch.device | str) -> Tensor:
    """``estimator``'s displacement ``(R, 3)`` mm of every fixed keypoint row of ``pair`` (its mm frame).

    The rows are split at random into ``ceil(R / fixed_count)`` fixed clouds of about equal size (the
    density the network sees in training); each is registered to ``moving_count`` moving keypoints
    drawn at random from all rows, or with ``disjoint`` from the other rows only, with the moving
    jitter of ``sampling`` (the training clouds' :class:`regframe.point_clouds.CloudSampling`, without
    augmentation).
    """
    fixed_count, moving_count = sampling.fixed_count, sampling.moving_count
    rows = len(pair.fixed_keypoints)
    fixed_mm = voxel_to_mm(pair.fixed_keypoints, pair.spacing)
    moving_mm = voxel_to_mm(pair.moving_keypoints, pair.spacing)
    labels = torch.empty(rows, 3)
    order = torch.randperm(rows, generator=generator)
    for chunk in torch.tensor_split(order, math.ceil(rows / fixed_count)):
        others = torch.ones(rows, dtype=torch.bool)
        if sampling.disjoint:
            others[chunk] = False
        candidates = others.nonzero().squeeze(1)
        moving_rows = candidates[torch.randperm(len(candidates), generator=generator)[:moving_count]]
        moving = jittered(moving_mm[moving_rows], sampling.moving_jitter_mm, generator)
        labels[chunk] = estimator(fixed_mm[chunk][None].to(device), moving[None].to(device))[0].float().cpu()
    return labels


class PointCyclicalSelfTraining(SelfTrainingLoop, PointRegistrationModule):
    """CST LightningModule for keypoint clouds (:class:`~data_modules.points.PointCloudDataModule` batches).

    Args:
        estimator: a point estimator (default :class:`~regframe.estimators.points.PointCloudEstimator`,
            graph CNN + sparse LBP); its innermost network is trained and re-initialised for stage 0.
        optimizer: optimiser factory over the estimator's parameters (paper: Adam, 1e-3).
        lr_scheduler: scheduler factory called with the optimiser and the optimiser steps per stage,
            stepped every optimiser step (paper: :class:`StageStepLR`, /10 at epochs 40 and 52 of 60);
            ``None`` keeps the learning rate constant.
        stages, epochs_per_stage: the schedule (paper: 5 stages of 60 epochs).
        pseudo_label_dir: where the store lives (default ``<run dir>/pseudo_labels``).
        random_init_seed, stage0_init: the random stage-0 network (see
            :class:`~regframe.methods.cyclical.CyclicalSelfTraining`).
        spline_smooth_weight: regularisation (mm³) of the spline that carries the sparse displacements
            to the landmarks for the TRE (0: interpolating); validation is
            :class:`~regframe.methods.points_base.PointRegistrationModule`'s.
    """

    def __init__(
        self,
        estimator: PointDisplacementEstimator | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: StageLRSchedulerCallable | None = None,
        stages: int = 5,
        epochs_per_stage: int = 60,
        pseudo_label_dir: str | None = None,
        random_init_seed: int = 1234,
        stage0_init: str = "default",
        spline_smooth_weight: float = 0.0,
    ) -> None:
        super().__init__(estimator, optimizer, lr_scheduler, spline_smooth_weight)
        self.init_self_training(stages, epochs_per_stage, pseudo_label_dir, random_init_seed, stage0_init)

    def mean_val_dice(self, estimator: nn.Module, dataloader: Any) -> float:
        """Point clouds carry no label maps, so there is no Dice to score (``PseudoLabelRefresh``'s
        ``evaluate_stage0`` must be off; the TRE is logged as ``val/tre_mm`` instead)."""
        raise RegframeInputError("PseudoLabelRefresh: set init_args.evaluate_stage0: false for point clouds "
                                 "(no label maps for Dice; the TRE is logged as val/tre_mm)")

    # ------------------------------------------------------------------ pseudo labels
    def pseudo_label_layout(self, datamodule: Any) -> tuple[int, tuple[int, ...]]:
        """One ``(R, 3)`` mm label per training pair, ``R`` = the most fixed keypoint rows of a pair."""
        pairs = getattr(datamodule, "train_pairs", None)
        if not pairs or not isinstance(pairs[0], PointPair):
            raise RegframeInputError("PointCyclicalSelfTraining needs a point-cloud datamodule "
                                     "(data_modules.points.PointCloudDataModule) with training pairs")
        return len(pairs), (max(len(pair.fixed_keypoints) for pair in pairs), 3)

    def generate_pseudo_labels(self, datamodule: Any, stage: int, estimator: nn.Module | None = None) -> Tensor:
        """Store ``estimator``'s (default: the trained one's) displacements of every fixed keypoint row of
        every training pair as ``stage`` (:func:`keypoint_pseudo_labels`, subsets seeded by the stage
        and pair); log their mean error against the keypoint correspondence (a diagnostic, never used
        in training). Returns the per-pair difficulty: zero (no refinement), i.e. uniform sampling."""
        if self.store is None:
            raise RegframeInputError("pseudo-label store not opened (call open_pseudo_labels first)")
        estimator = estimator if estimator is not None else self.estimator
        sampling = datamodule.train_sampling
        was_training = estimator.training
        estimator.eval()
        writer = self.store.begin_stage(stage)
        errors = []
        try:
            for index, pair in enumerate(datamodule.train_pairs):
                generator = torch.Generator().manual_seed(stage * 1_000_003 + index)
                labels = keypoint_pseudo_labels(estimator, pair, sampling, generator, self.device)
                stored = labels.new_full(self.store.shape, math.nan)
                stored[:len(labels)] = labels
                writer.write([index], stored[None])
                truth = voxel_to_mm(pair.moving_keypoints - pair.fixed_keypoints, pair.spacing)
                errors.append(float((labels - truth).norm(dim=1).mean()))
            writer.commit()
        finally:
            estimator.train(was_training)
        self.store.use_stage(stage)
        rank_zero_info(f"pseudo labels, stage {stage}: mean error {sum(errors) / len(errors):.2f} mm at the "
                       "training keypoints (diagnostic)")
        return torch.zeros(len(datamodule.train_pairs))

    # ------------------------------------------------------------------ training
    def pseudo_label_batch_loss(self, batch: Mapping[str, Any], labels: Tensor) -> Tensor:
        """Mean end-point error (mm) of the trained network at the served fixed points against their
        labels ``labels (B, R, 3)`` (rows ``fixed_point_index``), mapped through the augmentation."""
        index = batch["fixed_point_index"].long()
        picked = labels.gather(1, index.unsqueeze(-1).expand(-1, -1, 3))
        target = augmented_labels(picked, batch["fixed_points"], batch["fixed_affine"], batch["moving_affine"])
        predicted = trained_network(self.estimator)(batch["fixed_points"], batch["moving_points"])
        return (predicted - target).norm(dim=-1).mean()
