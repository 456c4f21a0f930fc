"""Inverse consistency (ICE) around any estimator."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.protocols import CoarseGridEstimator
from regframe.optim.consistency import inverse_consistent
from regframe.spatial import resize_field


class InverseConsistent(DisplacementEstimator):
    """The forward field of ``estimator`` made inverse consistent with its backward field by
    ``iterations`` symmetric updates (:func:`regframe.optim.consistency.inverse_consistent`).

    For a :class:`~regframe.estimators.protocols.CoarseGridEstimator` (CST's ``h∘g``) both fields come
    from one feature pass and are corrected on its coarse grid before upsampling; for any other
    estimator the two fields ``estimator(F, M)`` and ``estimator(M, F)`` are corrected on the input grid.
    """

    def __init__(self, estimator: nn.Module, iterations: int = 15) -> None:
        super().__init__()
        self.estimator = estimator
        self.iterations = iterations

    @property
    def wrapped(self) -> nn.Module:
        return self.estimator

    def forward(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Corrected field ``(B, D, *output_size)`` (default: the input grid) in voxels of that grid."""
        size = tuple(output_size) if output_size is not None else tuple(fixed.shape[2:])
        if isinstance(self.estimator, CoarseGridEstimator):
            forward, backward = self.estimator.coarse_fields(fixed, moving)
            return self.estimator.upsample(inverse_consistent(forward, backward, self.iterations), size)
        field = inverse_consistent(self.estimator(fixed, moving), self.estimator(moving, fixed), self.iterations)
        return resize_field(field, size)
