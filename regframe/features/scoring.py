"""Per-voxel weighting networks used only during training to reweight intensity residuals.

- :class:`ScoringUNet` (AdaCS): correspondence score ``S = g(I_t) ∈ (0, 1)`` from the target image.
- :class:`VarianceUNet` (NLL / β-NLL baselines): residual variance ``σ² = h(I_t, I_s∘φ) > 0``.

Both are small MONAI ``BasicUNet``s without normalisation; inputs ``(B, C, *S)`` in 2D or 3D, outputs ``(B, 1, *S)``.
Inputs are zero-padded to a multiple of 16 and the output is cropped back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

SMALL_FEATURES = (8, 16, 16, 16, 16, 8)


def _padded_call(net: nn.Module, x: Tensor, multiple: int = 16) -> Tensor:
    shape = x.shape[2:]
    pad = []
    for n in reversed(shape):
        pad += [0, math.ceil(n / multiple) * multiple - n]
    out = net(F.pad(x, pad))
    return out[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]


class ScoringUNet(nn.Module):
    """Correspondence scoring estimator ``S = sigmoid(unet(target))``, shape ``(B, 1, *S)``.

    ``initial_score`` sets the output bias so training starts from ``S ≈ initial_score``
    everywhere (0.5 = an untrained sigmoid).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1,
                 features: tuple[int, ...] = SMALL_FEATURES, initial_score: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < initial_score < 1.0:
            raise ValueError(f"initial_score must be in (0, 1), got {initial_score}")
        self.unet = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                              features=features, norm=None)
        final = self.unet.final_conv
        nn.init.zeros_(final.weight)
        nn.init.constant_(final.bias, math.log(initial_score / (1.0 - initial_score)))

    def forward(self, target: Tensor) -> Tensor:
        return _padded_call(self.unet, target).sigmoid()


class VarianceUNet(nn.Module):
    """Heteroscedastic variance ``σ² = softplus(unet([target, warped])) + min_variance``, ``(B, 1, *S)``
    in squared intensity units; starts at ``σ² ≈ initial_variance``."""

    def __init__(self, spatial_dims: int = 3, features: tuple[int, ...] = SMALL_FEATURES,
                 initial_variance: float = 0.01, min_variance: float = 1e-4) -> None:
        super().__init__()
        if initial_variance <= min_variance:
            raise ValueError(f"initial_variance {initial_variance} must exceed min_variance {min_variance}")
        self.unet = BasicUNet(spatial_dims=spatial_dims, in_channels=2, out_channels=1,
                              features=features, norm=None)
        self.min_variance = min_variance
        final = self.unet.final_conv
        nn.init.zeros_(final.weight)
        excess = initial_variance - min_variance
        nn.init.constant_(final.bias, math.log(math.expm1(excess)))  # softplus^-1

    def forward(self, target: Tensor, warped: Tensor) -> Tensor:
        return F.softplus(_padded_call(self.unet, torch.cat([target, warped], dim=1))) + self.min_variance

