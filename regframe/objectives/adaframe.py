"""AdaFrame: the data term is down-weighted where the standardised residual is large,
``mean(α r²) + λ‖∇u‖²`` with ``α = 1 − sigmoid(a ρ̂ − b)`` a constant (no gradient)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from regframe.objectives.residual import ResidualObjective


class AdaFrame(ResidualObjective):
    """Residual-adaptive data weighting; ``ρ̂`` is ``|r|`` standardised per pair, ``a = a₀/(μ+ε)`` and
    ``b = b₀(1 − cos πμ)`` with ``μ = mean |r|`` (intensities in [0, 1]).

    Args:
        a0, b0: ``a₀`` and ``b₀``.
        smooth_weight: λ.
    """

    def __init__(self, a0: float = 0.1, b0: float = 10.0, smooth_weight: float = 0.01) -> None:
        super().__init__(smooth_weight)
        self.a0 = a0
        self.b0 = b0

    def weight(self, r2: Tensor, eps: float = 1e-8) -> Tensor:
        """Per-voxel data weight ``1 − sigmoid(a ρ̂ − b)`` in [0, 1], ``(B, 1, *S)``."""
        delta = r2.sqrt()
        flat = delta.flatten(1)
        shape = (-1,) + (1,) * (delta.dim() - 1)
        mu, var = flat.mean(1).view(shape), flat.var(1, unbiased=False).view(shape)
        rho = (delta - mu) / torch.sqrt(var + eps)
        a = self.a0 / (mu + eps)
        b = self.b0 * (1.0 - torch.cos(math.pi * mu))
        return 1.0 - torch.sigmoid(a * rho - b)

    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        alpha = self.weight(r2.detach())
        return (alpha * r2).mean(), {"weight": alpha.mean()}

    def weight_maps(self, fixed: Tensor, warped: Tensor) -> dict[str, Tensor]:
        return {"weight": self.weight((fixed - warped).pow(2))}
