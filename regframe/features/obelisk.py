"""OBELISK layer (Heinrich et al., 2019): sparse deformable convolution with trainable offsets.

Every output point of a coarse regular grid samples the input at ``num_offsets`` positions
``grid point + offset_k``; the offsets are shared by all grid points and learnt. The ``C·K``
samples per point are mixed by a grouped 1×1(×1) convolution and a small 1×1(×1) dense block.
Offsets are in ``grid_sample``'s normalised coordinates ([-1, 1] across the input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


class ObeliskLayer(nn.Module):
    """Sample ``(B, C, *S)`` at a regular grid of size ``output_size`` plus ``num_offsets`` learnt
    offsets and map the ``C·num_offsets`` samples to ``out_channels`` features ``(B, out, *output_size)``.

    ``align_corners`` is used both for the regular grid and for ``grid_sample`` (the original code
    relied on the old PyTorch default ``True``; ``False`` puts grid points at cell centres).
    """

    def __init__(self, in_channels: int, num_offsets: int, out_channels: int, spatial_dims: int = 3,
                 hidden_channels: int = 128, groups: int = 4, growth: int = 32,
                 offset_init_std: float = 0.05, align_corners: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.align_corners = align_corners
        # One (x, y[, z]) offset per sampling position, shared by all grid points.
        self.offsets = nn.Parameter(torch.randn(num_offsets, spatial_dims) * offset_init_std)
        conv = conv_nd(spatial_dims)
        self.mix = conv(in_channels * num_offsets, hidden_channels, 1, groups=groups, bias=False)
        self.dense = nn.ModuleList([
            conv(hidden_channels + i * growth, growth, 1, bias=False) for i in range(3)
        ])
        self.out = conv(hidden_channels + 3 * growth, out_channels, 1, bias=False)
        self.norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](out_channels)

    def forward(self, x: Tensor, output_size: Sequence[int]) -> Tensor:
        features = F.leaky_relu(self.mix(self.sample(x, output_size)), 0.2)
        for layer in self.dense:
            features = torch.cat([features, F.leaky_relu(layer(features), 0.2)], dim=1)
        return F.leaky_relu(self.norm(self.out(features)), 0.2)

    def sample(self, x: Tensor, output_size: Sequence[int]) -> Tensor:
        """``(B, C, *S) -> (B, C·K, *output_size)``: channel ``c·K + k`` is channel ``c`` sampled at
        every grid point shifted by offset ``k`` (bilinear, border padding)."""
        batch, channels = x.shape[:2]
        output_size = tuple(int(s) for s in output_size)
        theta = torch.eye(self.spatial_dims, self.spatial_dims + 1, dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta[None], [1, 1, *output_size], align_corners=self.align_corners)
        points = grid.reshape(1, 1, -1, self.spatial_dims)                      # (1, 1, P, D)
        positions = points + self.offsets.to(x.dtype)[None, :, None, :]          # (1, K, P, D)
        positions = positions.expand(batch, -1, -1, -1)
        if self.spatial_dims == 3:
            positions = positions.unsqueeze(3)                                   # (B, K, P, 1, 3)
        samples = F.grid_sample(x, positions, mode="bilinear", padding_mode="border",
                                align_corners=self.align_corners)                # (B, C, K, P[, 1])
        return samples.reshape(batch, channels * self.offsets.shape[0], *output_size)
