"""``PointRegistrationModule``: what point-cloud methods share (the counterpart of
:class:`~regframe.methods.base.RegistrationModule` for clouds).

It owns one :class:`~regframe.estimators.points.PointDisplacementEstimator` and does validation /
test on the batches of :class:`data_modules.points.PointCloudDataModule`: ``{prefix}/tre_mm``, the
mean TRE at the landmarks (displacements interpolated there, :mod:`regframe.point_metrics`),
``{prefix}/initial_tre_mm`` (the same before registration), and
``{prefix}/tre_keypoints_mm`` at the fixed points when ``fixed_points_in_moving`` is present, and at
test ``test/sdlogj`` and ``test/fold_pct`` of the dense field (:func:`regframe.point_fields.dense_field`)
over the bounding box of the fixed mask. It
builds the optimiser and its scheduler (stepped once per epoch: point epochs are a few steps) and
stops on a non-finite loss. Subclasses implement ``training_step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.points import PointCloudEstimator, PointDisplacementEstimator
from regframe.methods.base import optimizer_and_scheduler, save_config_hyperparameters, stop_on_nonfinite_loss
from regframe.metrics import jacobian_metrics
from regframe.point_fields import dense_field
from regframe.point_metrics import keypoint_tre, landmark_tre


def mask_box(mask: Tensor, margin: int = 2) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask (*S)`` grown by ``margin`` voxels (the whole grid if empty)."""
    if not mask.any():
        return tuple(slice(None) for _ in mask.shape)
    box = []
    for axis in range(mask.dim()):
        present = mask.any(dim=tuple(a for a in range(mask.dim()) if a != axis)).nonzero()
        box.append(slice(max(int(present.min()) - margin, 0), int(present.max()) + margin + 1))
    return tuple(box)


class PointRegistrationModule(pl.LightningModule):
    """Base LightningModule of point methods.

    Args:
        estimator: ``displacements (B, N, 3) mm = estimator(fixed_points, moving_points)``.
        optimizer: optimiser factory over the estimator's parameters (YAML ``class_path``).
        lr_scheduler: optional scheduler factory, stepped once per epoch.
        spline_smooth_weight: regularisation (mm³) of the spline that carries the displacements to the
            landmarks (0: interpolating).
    """

    def __init__(self, estimator: PointDisplacementEstimator | None = None,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: LRSchedulerCallable | None = None,
                 spline_smooth_weight: float = 0.0) -> None:
        super().__init__()
        save_config_hyperparameters(self)
        if spline_smooth_weight < 0:
            raise RegframeInputError(f"model.init_args.spline_smooth_weight must be >= 0, got {spline_smooth_weight}")
        self.estimator = estimator if estimator is not None else PointCloudEstimator()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.spline_smooth_weight = spline_smooth_weight

    def forward(self, fixed_points: Tensor, moving_points: Tensor) -> Tensor:
        return self.estimator(fixed_points, moving_points)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, float]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, float]:
        return self._evaluate(batch, "test")

    def _evaluate(self, batch: Mapping[str, Any], prefix: str) -> dict[str, float]:
        fixed_points = batch["fixed_points"]
        displacements = self.estimator(fixed_points, batch["moving_points"]).float()
        scores: dict[str, float] = {}
        for i in range(fixed_points.shape[0]):
            landmarks, targets = batch["fixed_landmarks"][i], batch["moving_landmarks"][i]
            item = {f"{prefix}/tre_mm": landmark_tre(fixed_points[i], displacements[i], landmarks, targets,
                                                     self.spline_smooth_weight).mean().item(),
                    f"{prefix}/initial_tre_mm": (landmarks - targets).norm(dim=1).mean().item()}
            if "fixed_points_in_moving" in batch:
                item[f"{prefix}/tre_keypoints_mm"] = keypoint_tre(fixed_points[i], displacements[i],
                                                                  batch["fixed_points_in_moving"][i]).mean().item()
            if prefix == "test" and "fixed_mask" in batch:
                mask = batch["fixed_mask"][i][0].bool()
                field = dense_field(fixed_points[i:i + 1], displacements[i:i + 1], mask.shape,
                                    batch["spacing"][i].tolist(), self.spline_smooth_weight)
                smoothness = jacobian_metrics(field[(0, slice(None), *mask_box(mask))])
                item[f"{prefix}/sdlogj"], item[f"{prefix}/fold_pct"] = smoothness["sdlogj"], smoothness["fold_pct"]
            self.log_dict(item, on_epoch=True, on_step=False, batch_size=1, sync_dist=True)
            scores = item
        return scores

    def log_training_loss(self, loss: Tensor, batch_size: int, **terms: Tensor) -> None:
        """Log ``train/loss`` and each named term as ``train/<name>``."""
        values = {"train/loss": loss.detach(), **{f"train/{name}": value.detach() for name, value in terms.items()}}
        self.log_dict(values, on_step=True, on_epoch=True, prog_bar=False, batch_size=batch_size)

    def on_before_backward(self, loss: Tensor) -> None:
        stop_on_nonfinite_loss(self, loss)

    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self.optimizer_factory, self.lr_scheduler_factory,
                                       self.estimator.parameters(), interval="epoch")
