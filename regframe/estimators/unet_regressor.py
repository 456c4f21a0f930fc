"""VoxelMorph-style displacement regressor: a dense network maps ``concat(moving, fixed)`` to a field.

The backbone is injected (any ``nn.Module`` taking ``(B, 2, *S)`` and returning ``(B, C, *S)``),
so the same regressor serves a U-Net (VoxelMorph), a Swin-UNETR (TransMorph-like, see
``transmorph.py``) or anything else. A final convolution, initialised near zero, turns the
``C`` backbone channels into ``D`` displacement channels (voxels). With ``integration_steps > 0``
the output is read as a stationary velocity field and integrated by scaling and squaring
(MONAI ``DVF2DDF``), giving a diffeomorphic map in the regframe convention: MONAI's ``Warp``
samples at ``x + ddf(x)`` in voxel units, so one squaring step computes ``u + u∘(id + u)``,
which is ``regframe.spatial.compose(u, u)`` (a backward map on the fixed grid, voxels).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF
from monai.networks.nets import BasicUNet
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator


def default_unet(spatial_dims: int, in_channels: int = 2,
                 features: tuple[int, ...] = (16, 32, 32, 32, 32, 16)) -> BasicUNet:
    """A small MONAI ``BasicUNet`` (4 poolings, no normalisation as in VoxelMorph) whose output has
    ``features[-1]`` channels."""
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=features[-1],
                     features=features, norm=None)


class UNetRegressor(DisplacementEstimator):
    """``u = head(backbone(concat(moving, fixed)))``, optionally integrated as a velocity field.

    Args:
        spatial_dims: 2 or 3.
        backbone: module mapping ``(B, 2, *S) -> (B, backbone_channels, *S)``; default
            :func:`default_unet`.
        backbone_channels: channels produced by ``backbone`` (16 for the default).
        integration_steps: scaling-and-squaring steps (0 = plain displacement regression).
        size_divisible: inputs are zero-padded at the far end of every axis to a multiple of this
            (16 for 4 poolings, 32 for a Swin-UNETR) and the field is cropped back.
        init_std: standard deviation of the final convolution's weights (bias starts at 0), so
            training starts from an almost-identity map.
    """

    def __init__(self, spatial_dims: int = 3, backbone: nn.Module | None = None, backbone_channels: int = 16,
                 integration_steps: int = 0, size_divisible: int = 16, init_std: float = 1e-5) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.backbone = backbone if backbone is not None else default_unet(spatial_dims)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.head = conv(backbone_channels, spatial_dims, kernel_size=3, padding=1)
        self.init_std = init_std
        self.reset_parameters()
        self.size_divisible = size_divisible
        self.integrate: nn.Module | None = None
        if integration_steps > 0:
            with warnings.catch_warnings():  # MONAI announces its fallback to torch's grid_sample
                warnings.simplefilter("ignore", UserWarning)
                self.integrate = DVF2DDF(num_steps=integration_steps, mode="bilinear", padding_mode="border")

    def reset_parameters(self) -> None:
        """Near-zero final convolution (weights ``N(0, init_std)``, zero bias): an almost-identity map.
        Module-wide re-initialisations (e.g. CST's random stage-0 copy) reset children first, so
        this keeps a freshly random regressor close to the identity."""
        nn.init.normal_(self.head.weight, std=self.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Displacement ``(B, D, *S)`` in voxels (backward map on the fixed grid)."""
        if fixed.shape != moving.shape or fixed.dim() != self.spatial_dims + 2:
            raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must both be "
                             f"(B, 1, *S) with {self.spatial_dims} spatial axes")
        shape = fixed.shape[2:]
        pad = []
        for n in reversed(shape):  # F.pad lists the last axis first
            pad += [0, math.ceil(n / self.size_divisible) * self.size_divisible - n]
        x = F.pad(torch.cat([moving, fixed], dim=1), pad)
        field = self.head(self.backbone(x))
        field = field[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]
        if self.integrate is not None:
            field = self.integrate(field)
        return field
