"""Hybrid OBELISK U-Net (Heinrich et al., 2019), the JRSS backbone for segmentation and registration.

Encoder of 3×3(×3) convolutions (BatchNorm + LeakyReLU 0.2): 1→4 at full resolution, 4→16 stride 2,
16→16, 16→32 stride 2, 32→32, 32→32. Two OBELISK layers sample the full-resolution features:
128 offsets on the quarter-resolution grid and 512 offsets on the eighth-resolution grid. The decoder
concatenates and upsamples back to full resolution. ``dropout`` (0 = off) is applied after the last
down-sampling and the last up-sampling layer (the JRSS noisy student uses 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.features.obelisk import ObeliskLayer, conv_nd


class ConvBlock(nn.Sequential):
    """3×3(×3) convolution, BatchNorm, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, stride: int = 1) -> None:
        norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        super().__init__(conv_nd(spatial_dims)(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         norm(out_channels), nn.LeakyReLU(0.2))


class ObeliskUNet(nn.Module):
    """``(B, in_channels, *S) -> (B, out_channels, *S)`` at the input resolution (any size ≥ 8).

    ``head_init_std``: if given, the output convolution's weights are drawn from ``N(0, std)`` and its
    bias set to zero (registration variant: ``1e-5`` so the initial flow is ≈ 0).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, spatial_dims: int = 3,
                 dropout: float = 0.0, head_init_std: float | None = None, align_corners: bool = False) -> None:
        super().__init__()
        d = spatial_dims
        self.spatial_dims = d
        self.enc0 = ConvBlock(in_channels, 4, d)
        self.enc1 = nn.Sequential(ConvBlock(4, 16, d, stride=2), ConvBlock(16, 16, d))
        self.down2 = ConvBlock(16, 32, d, stride=2)
        self.drop_down = nn.Dropout(dropout)
        self.enc2 = nn.Sequential(ConvBlock(32, 32, d), ConvBlock(32, 32, d))
        self.obelisk_quarter = ObeliskLayer(4, 128, 32, d, align_corners=align_corners)
        self.obelisk_eighth = ObeliskLayer(4, 512, 32, d, align_corners=align_corners)
        self.dec_quarter = ConvBlock(96, 32, d)
        self.dec_half = ConvBlock(32 + 16, 16, d)
        self.dec_full = ConvBlock(16 + 4, 16, d)
        self.drop_up = nn.Dropout(dropout)
        self.head = conv_nd(d)(16, out_channels, 1)
        if head_init_std is not None:
            nn.init.normal_(self.head.weight, 0.0, head_init_std)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        full = self.enc0(x)
        half = self.enc1(full)
        quarter = self.enc2(self.drop_down(self.down2(half)))
        eighth_size = [(s + 1) // 2 for s in quarter.shape[2:]]
        ob_quarter = self.obelisk_quarter(full, quarter.shape[2:])
        ob_eighth = self.obelisk_eighth(full, eighth_size)
        ob_eighth = self._upsample(ob_eighth, quarter)
        y = self.dec_quarter(torch.cat([quarter, ob_quarter, ob_eighth], dim=1))
        y = self.dec_half(torch.cat([self._upsample(y, half), half], dim=1))
        y = self.dec_full(torch.cat([self._upsample(y, full), full], dim=1))
        return self.head(self.drop_up(y))

    def _upsample(self, x: Tensor, like: Tensor) -> Tensor:
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=False)
