"""The one interface every registration method trains and every user calls at inference."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class DisplacementEstimator(nn.Module, ABC):
    """Maps a pair of images to a displacement field: ``u = estimator(fixed, moving)``.

    ``fixed`` and ``moving`` are ``(B, 1, *S)`` float tensors on the same grid (2D or 3D). The result
    is ``(B, D, *S)`` in voxels, channel ``i`` along spatial axis ``i``, a backward map on the fixed
    grid (``warped(x) = moving(x + u(x))``), at the input resolution.
    """

    @abstractmethod
    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Return the displacement ``(B, D, *S)`` in voxels that aligns ``moving`` to ``fixed``."""


class IdentityEstimator(DisplacementEstimator):
    """The zero field: the 'before registration' baseline."""

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return fixed.new_zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
