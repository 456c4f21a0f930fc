"""AdaReg: the smoothness term is down-weighted where the residual is large,
``mean(r²) + λ mean(α² ‖∇u‖²)`` with ``α = exp(−c |r| / mean|r|)`` a constant (no gradient)."""

from __future__ import annotations

import torch
from torch import Tensor

from regframe.losses import forward_differences
from regframe.objectives.residual import ResidualObjective


class AdaReg(ResidualObjective):
    """Residual-adaptive regularisation.

    Args:
        c: sharpness ``c`` of the weight (α = e^{−c} where ``|r|`` equals its mean).
        smooth_weight: λ.
    """

    def __init__(self, c: float = 50.0, smooth_weight: float = 0.01) -> None:
        super().__init__(smooth_weight)
        self.c = c

    def weight(self, r2: Tensor) -> Tensor:
        """Per-voxel smoothness weight ``exp(−c |r| / mean|r|)`` ``(B, 1, *S)``, mean over each pair."""
        rho = r2.sqrt()
        sigma = rho.flatten(1).mean(1).view(-1, *([1] * (rho.dim() - 1)))
        return torch.exp(-self.c * rho / (sigma + 1e-8))

    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        return r2.mean(), {}

    def regulariser(self, disp: Tensor, r2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``mean(α² ‖∇u‖²)`` per axis (``α`` cropped to each forward difference's grid), averaged over axes."""
        alpha = self.weight(r2.detach())
        diffs = forward_differences(disp)
        smooth = sum((_crop_like(alpha, d).pow(2) * d.pow(2)).mean() for d in diffs) / len(diffs)
        return smooth, {"weight": alpha.mean()}

    def weight_maps(self, fixed: Tensor, warped: Tensor) -> dict[str, Tensor]:
        return {"weight": self.weight((fixed - warped).pow(2))}


def _crop_like(weight: Tensor, diff: Tensor) -> Tensor:
    """Crop a full-grid ``weight`` to the grid of a forward difference (one voxel less on one axis)."""
    return weight[(slice(None), slice(None)) + tuple(slice(0, n) for n in diff.shape[2:])]
