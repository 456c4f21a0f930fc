"""Synthetic-deformation supervision for point clouds (CST paper, Table 3): pairs made from one cloud
by a random rigid transform or a random smooth field (:mod:`regframe.point_deformations`), supervised
by the known displacement at the fixed points (mean end-point error, mm)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.estimators.points import PointDisplacementEstimator
from regframe.methods.points_base import PointRegistrationModule
from regframe.point_deformations import DeformationSampler, synthetic_pair


class PointSyntheticSupervised(PointRegistrationModule):
    """Train ``estimator`` on synthetic pairs from each batch's moving cloud (one scan; the real pair
    relation is not used): its rows are split at random into a fixed cloud of as many points as the
    batch's fixed cloud and a moving cloud of the rest, which is deformed by ``kind`` (``"rigid"``:
    rotation up to ``max_rotation_deg`` degrees about the centroid, translation up to
    ``max_translation_mm`` per axis; ``"field"``: ``num_centres`` Gaussian RBFs of width ``width_mm``
    and weights up to ``amplitude_mm``). ``disjoint``: fixed and moving clouds from disjoint rows (else
    the moving cloud holds every row, as the data module's independent subsets); ``moving_jitter_mm``:
    noise added to the moving cloud (set it like the data module's). Loss:
    ``mean ‖û(x) − u(x)‖`` (mm) over the fixed points.
    The deformation ranges are not given by the paper; the defaults are sensible, not tuned."""

    def __init__(self, estimator: PointDisplacementEstimator | None = None,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: LRSchedulerCallable | None = None,
                 kind: str = "rigid", max_rotation_deg: float = 10.0, max_translation_mm: float = 10.0,
                 amplitude_mm: float = 10.0, width_mm: float = 40.0, num_centres: int = 8, disjoint: bool = False,
                 moving_jitter_mm: float = 0.0, spline_smooth_weight: float = 0.0) -> None:
        deformations = DeformationSampler(kind, max_rotation_deg, max_translation_mm, amplitude_mm, width_mm,
                                          num_centres)  # checks the options before the estimator is built
        super().__init__(estimator, optimizer, lr_scheduler, spline_smooth_weight)
        self.deformations = deformations
        self.disjoint = disjoint
        self.moving_jitter_mm = moving_jitter_mm

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        source = batch["moving_points"]
        fixed_points, moving_points, target = synthetic_pair(source, batch["fixed_points"].shape[1],
                                                             self.deformations(source), disjoint=self.disjoint,
                                                             moving_jitter_mm=self.moving_jitter_mm)
        displacements = self.estimator(fixed_points, moving_points)
        loss = (displacements - target).norm(dim=-1).mean()
        self.log_training_loss(loss, source.shape[0])
        return loss
