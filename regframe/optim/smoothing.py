"""Box filtering of dense maps (cost volumes, displacement fields), 1D/2D/3D."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def box_filter(x: Tensor, times: int = 1, kernel_size: int = 3) -> Tensor:
    """Apply a ``kernel_size`` box filter (stride 1, same size) ``times`` times to every channel
    of ``x (B, C, *S)``.

    Border voxels average over the neighbours inside the grid only (like avg-pool with
    ``count_include_pad=False``), so a constant displacement stays constant up to the border
    instead of shrinking towards zero as with zero padding. Works for any grid size, even below
    the kernel size.
    """
    if times <= 0:
        return x
    dims = x.dim() - 2
    pool = _AVG_POOL[dims]
    pad = (kernel_size // 2,) * (2 * dims)
    ones = x.new_ones((1, 1, *x.shape[2:]))
    count = pool(F.pad(ones, pad), kernel_size, stride=1)
    for _ in range(times):
        x = pool(F.pad(x, pad), kernel_size, stride=1) / count
    return x
