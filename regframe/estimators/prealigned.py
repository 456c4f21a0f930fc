"""Affine pre-alignment before any estimator (``regframe register --affine``, or in a YAML config)."""

from __future__ import annotations

from torch import Tensor

from regframe.estimators.affine import IterativeAffineEstimator
from regframe.estimators.base import DisplacementEstimator
from regframe.spatial import compose, warp


class AffinePrealigned(DisplacementEstimator):
    """Run ``affine`` first, then ``estimator`` between the fixed image and the affinely warped
    moving image; return the composed field, which warps the original moving image in one step.

    Args:
        estimator: the deformable method, applied after the pre-alignment.
        affine: the pre-alignment (default :class:`IterativeAffineEstimator` with its defaults).

    In a config::

        estimator:
          class_path: regframe.estimators.prealigned.AffinePrealigned
          init_args:
            estimator: {class_path: regframe.estimators.unet_regressor.UNetRegressor}
    """

    def __init__(self, estimator: DisplacementEstimator, affine: DisplacementEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator
        self.affine = affine if affine is not None else IterativeAffineEstimator()

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        prealignment = self.affine(fixed, moving)
        residual = self.estimator(fixed, warp(moving, prealignment))
        return compose(prealignment, residual)
