"""CST refinement around a :class:`FeatureConvexEstimator`: inverse consistency, a second warp
and Adam instance optimisation. Used identically for pseudo labels and at test time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.optim.adam import adam_instance_optimisation
from regframe.optim.consistency import inverse_consistent
from regframe.optim.upsample import upsample_field
from regframe.spatial import compose, resize_field, warp


class Refinement(NamedTuple):
    """Fields ``(B, D, *S)`` in voxels of the output grid, before and after Adam IO."""

    before_adam: Tensor
    after_adam: Tensor


class RefinedEstimator(DisplacementEstimator):
    """Non-differentiable CST inference pipeline around ``base``.

    For each of ``warps`` passes (1 or 2): features of fixed and (warped) moving, the forward field
    and, with ``inverse_consistency``, the backward field on the feature grid, made inverse
    consistent by ``ice_iterations`` symmetric updates; the field is upsampled to the image grid.
    The second pass registers the moving image warped by the first field and the fields are
    composed as "first, then second" (:func:`regframe.spatial.compose`). Then, when
    ``adam_iterations > 0``, Adam instance optimisation on the network's stride-2 IO features of
    fixed and original moving (``adam_*``: see :func:`regframe.optim.adam.adam_instance_optimisation`).
    Runs ``base`` in whatever train/eval mode it is in; callers put it in eval mode.
    """

    def __init__(self, base: FeatureConvexEstimator | None = None, warps: int = 2, inverse_consistency: bool = True,
                 ice_iterations: int = 15, adam_iterations: int = 50, adam_lr: float = 1.0,
                 adam_data_weight: float = 12.0, adam_smooth_weight: float = 0.65, adam_smooth_pools: int = 3) -> None:
        super().__init__()
        if warps not in (1, 2):
            raise ValueError(f"warps must be 1 or 2, got {warps}")
        self.base = base if base is not None else FeatureConvexEstimator()
        self.warps = warps
        self.inverse_consistency = inverse_consistency
        self.ice_iterations = ice_iterations
        self.adam_iterations = adam_iterations
        self.adam_lr = adam_lr
        self.adam_data_weight = adam_data_weight
        self.adam_smooth_weight = adam_smooth_weight
        self.adam_smooth_pools = adam_smooth_pools

    def settings(self) -> dict:
        """The constructor arguments except ``base``."""
        return dict(warps=self.warps, inverse_consistency=self.inverse_consistency, ice_iterations=self.ice_iterations,
                    adam_iterations=self.adam_iterations, adam_lr=self.adam_lr,
                    adam_data_weight=self.adam_data_weight, adam_smooth_weight=self.adam_smooth_weight,
                    adam_smooth_pools=self.adam_smooth_pools)

    def with_settings(self, **changes) -> "RefinedEstimator":
        """A refined estimator sharing ``base`` (same weights) with some settings changed."""
        return RefinedEstimator(self.base, **{**self.settings(), **changes})

    def _pass(self, fixed_feat: Tensor, moving: Tensor, size: Sequence[int]) -> Tensor:
        moving_feat = self.base.feature_net(moving)
        field = self.base.coarse_from_features(fixed_feat, moving_feat)
        if self.inverse_consistency:
            backward = self.base.coarse_from_features(moving_feat, fixed_feat)
            field = inverse_consistent(field, backward, self.ice_iterations)
        return upsample_field(field, size)

    @torch.no_grad()
    def refine(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Refinement:
        """Both the field before and after Adam on ``output_size`` (default: the input grid)."""
        size = tuple(fixed.shape[2:])
        fixed_feats = self.base.feature_net.features(fixed)
        field = self._pass(fixed_feats.coarse, moving, size)
        if self.warps == 2:
            field = compose(field, self._pass(fixed_feats.coarse, warp(moving, field), size))
        out_size = tuple(output_size) if output_size is not None else size
        before = resize_field(field.float(), out_size)
        if self.adam_iterations <= 0:
            return Refinement(before, before)
        moving_fine = self.base.feature_net.features(moving).fine
        after = adam_instance_optimisation(field.float(), fixed_feats.fine.float(), moving_fine.float(),
                                           grid_spacing=size[0] // fixed_feats.fine.shape[2],
                                           iterations=self.adam_iterations, lr=self.adam_lr,
                                           data_weight=self.adam_data_weight, smooth_weight=self.adam_smooth_weight,
                                           smooth_pools=self.adam_smooth_pools)
        return Refinement(before, resize_field(after, out_size))

    def forward(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Refined field ``(B, D, *S)`` in voxels (not differentiable)."""
        return self.refine(fixed, moving, output_size).after_adam
