"""Box filtering and average pooling of dense maps (features, cost volumes, displacement fields), 1D/2D/3D."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _in_grid_count(x: Tensor, axis: int, kernel_size: int) -> Tensor:
    """Number of the ``kernel_size`` neighbours along ``axis`` that lie inside the grid, shaped to
    broadcast against ``x``."""
    n = x.shape[axis]
    radius = kernel_size // 2
    ones = F.pad(x.new_ones(n), (radius, radius))
    shape = [1] * x.dim()
    shape[axis] = n
    return sum(ones.narrow(0, shift, n) for shift in range(kernel_size)).view(shape)


def _box_along(x: Tensor, axis: int, kernel_size: int, count: Tensor) -> Tensor:
    """Mean over the ``kernel_size`` neighbours along ``axis`` that lie inside the grid (``count``)."""
    radius = kernel_size // 2
    pad = [0, 0] * (x.dim() - 2)
    pad[2 * (x.dim() - 1 - axis)] = pad[2 * (x.dim() - 1 - axis) + 1] = radius
    padded = F.pad(x, pad)
    return sum(padded.narrow(axis, shift, x.shape[axis]) for shift in range(kernel_size)) / count


def box_filter(x: Tensor, times: int = 1, kernel_size: int = 3) -> Tensor:
    """Apply a ``kernel_size`` box filter (stride 1, same size) ``times`` times to every channel
    of ``x (B, C, *S)``.

    Border voxels average over the neighbours inside the grid only (like avg-pool with
    ``count_include_pad=False``), so a constant displacement stays constant up to the border
    instead of shrinking towards zero as with zero padding. Works for any grid size, even below
    the kernel size. Computed separably, one axis at a time (the in-grid count factorises per
    axis), which is 3-6x faster than ``avg_pool3d`` on CPU.
    """
    if times <= 0:
        return x
    counts = {axis: _in_grid_count(x, axis, kernel_size) for axis in range(2, x.dim())}
    for _ in range(times):
        for axis, count in counts.items():
            x = _box_along(x, axis, kernel_size, count)
    return x


def pool(x: Tensor, factor: int) -> Tensor:
    """Average-pool ``(B, C, *S)`` by ``factor`` (kernel = stride = factor, a partial last window
    averages what it covers; 2D or 3D); 1 returns ``x`` unchanged."""
    if factor == 1:
        return x
    return (F.avg_pool3d if x.dim() == 5 else F.avg_pool2d)(x, factor, stride=factor, ceil_mode=True)
