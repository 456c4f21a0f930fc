"""Two-step registration around any estimator: register, warp, register again, compose."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.spatial import compose, resize_field, warp


class TwoStep(DisplacementEstimator):
    """``u = compose(u1, u2)`` with ``u1 = first(F, M)`` and ``u2 = second(F, M∘(id+u1))``, both on
    the input grid (:func:`regframe.spatial.compose`: "first, then second"), then resampled to
    ``output_size``. ``second=None`` runs ``first`` again (the same module, shared weights).
    Differentiable when its steps are.
    """

    def __init__(self, first: nn.Module, second: nn.Module | None = None) -> None:
        super().__init__()
        self.first = first
        self.second = second

    @property
    def wrapped(self) -> nn.Module:
        return self.first

    def forward(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Composed field ``(B, D, *output_size)`` (default: the input grid) in voxels of that grid."""
        first = self.first(fixed, moving)
        second = (self.second if self.second is not None else self.first)(fixed, warp(moving, first))
        field = compose(first, second)
        return field if output_size is None else resize_field(field, output_size)
