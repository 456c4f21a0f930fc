"""Upsampling of coarse displacement fields (CST): repeated x2 interpolation with smoothing."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from regframe.optim.smoothing import box_filter
from regframe.spatial import resize_field


def upsample_field(disp: Tensor, size: Sequence[int], doublings: int = 2, pools: int = 2) -> Tensor:
    """Bring ``disp (B, D, *S)`` (voxels of ``S``) to grid ``size``: ``doublings`` times (linear x2,
    then ``pools`` k3 box filters), then linear interpolation to ``size``. Vectors are rescaled to
    the new voxels at every step (:func:`regframe.spatial.resize_field`). CST: stride 8 -> 2 -> full."""
    for _ in range(doublings):
        disp = box_filter(resize_field(disp, [2 * n for n in disp.shape[2:]]), pools)
    return resize_field(disp, size)
