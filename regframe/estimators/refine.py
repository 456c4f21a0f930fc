"""Instance optimisation around any estimator: ``Refined(estimator, io)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.protocols import FeatureSharingEstimator, io_feature_source
from regframe.optim.instance import InstanceOptimisation
from regframe.spatial import resize_field


class Refinement(NamedTuple):
    """Fields ``(B, D, *S)`` in voxels of the output grid, before and after Adam IO."""

    before_adam: Tensor
    after_adam: Tensor


class Refined(DisplacementEstimator):
    """``estimator``'s field on the input grid, then instance optimisation ``io`` started from it on
    features of the fixed and the original moving image (``io.features``, or the estimator's own
    ``io_features`` when that is unset); finally resampled to ``output_size``. Not differentiable;
    runs ``estimator`` in whatever train/eval mode it is in (callers put it in eval mode). An
    estimator that shares its features (:class:`~regframe.estimators.protocols.FeatureSharingEstimator`)
    is run once for the field and the IO features, and its field goes to IO on its own grid.
    """

    def __init__(self, estimator: nn.Module, io: InstanceOptimisation | None = None) -> None:
        super().__init__()
        self.estimator = estimator
        self.io = io if io is not None else InstanceOptimisation()

    @property
    def wrapped(self) -> nn.Module:
        return self.estimator

    def io_features_of(self, image: Tensor) -> Tensor:
        """IO features ``(B, C, *G)`` of ``image``: ``io.features`` or the wrapped estimator's."""
        if self.io.features is not None:
            return self.io.features(image)
        return io_feature_source(self.estimator).io_features(image)

    @torch.no_grad()
    def refine(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Refinement:
        """The field before and after IO, on ``output_size`` (default: the input grid)."""
        size = tuple(output_size) if output_size is not None else tuple(fixed.shape[2:])
        if self.io.features is None and isinstance(self.estimator, FeatureSharingEstimator):
            field, fixed_feat, moving_feat = self.estimator.field_and_features(fixed, moving)
            field = field.float()
        else:
            field = self.estimator(fixed, moving).float()
            fixed_feat = moving_feat = None
        before = resize_field(field, size)
        if self.io.iterations == 0:
            return Refinement(before, before)
        if fixed_feat is None:
            fixed_feat, moving_feat = self.io_features_of(fixed), self.io_features_of(moving)
        after = self.io(field, fixed_feat.float(), moving_feat.float(), fixed)
        return Refinement(before, resize_field(after, size))

    def forward(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Refined field ``(B, D, *output_size)`` in voxels of that grid."""
        return self.refine(fixed, moving, output_size).after_adam
