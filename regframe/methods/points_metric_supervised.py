"""Metric supervision for point clouds (CST paper, Table 3): the point estimator trained by
``chamfer(x + u(x), moving) + smooth_weight · local_laplacian(u)`` (both mm²,
:mod:`regframe.objectives.point_losses`) instead of labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.points import PointDisplacementEstimator
from regframe.methods.points_base import PointRegistrationModule
from regframe.objectives.point_losses import chamfer_distance, local_laplacian


class PointMetricSupervised(PointRegistrationModule):
    """Train ``estimator`` by the symmetric squared Chamfer distance between the displaced fixed cloud
    and the moving cloud plus ``smooth_weight`` × the local Laplacian of the displacements on the
    ``laplacian_k``-nearest-neighbour graph of the fixed points. ``smooth_weight`` is not given by the
    paper; the default is a sensible value, not a tuned one."""

    def __init__(self, estimator: PointDisplacementEstimator | None = None,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: LRSchedulerCallable | None = None,
                 smooth_weight: float = 1.0, laplacian_k: int = 6, spline_smooth_weight: float = 0.0) -> None:
        if smooth_weight < 0 or laplacian_k < 1:
            raise RegframeInputError(f"PointMetricSupervised: need smooth_weight >= 0 and laplacian_k >= 1, got "
                                     f"smooth_weight={smooth_weight}, laplacian_k={laplacian_k}")
        super().__init__(estimator, optimizer, lr_scheduler, spline_smooth_weight)
        self.smooth_weight = smooth_weight
        self.laplacian_k = laplacian_k

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        fixed_points, moving_points = batch["fixed_points"], batch["moving_points"]
        displacements = self.estimator(fixed_points, moving_points)
        chamfer = chamfer_distance(fixed_points + displacements, moving_points)
        laplacian = local_laplacian(fixed_points, displacements, self.laplacian_k)
        loss = chamfer + self.smooth_weight * laplacian
        self.log_training_loss(loss, fixed_points.shape[0], chamfer=chamfer, laplacian=laplacian)
        return loss
