"""Correlation layer: a dense cost volume over integer displacements between two feature maps.

Label order: label ``l`` is the ``l``-th row of :func:`displacement_offsets`, i.e. the offsets
``(d_0, ..., d_{D-1})`` with ``d_i in [-r, r]`` enumerated in C order (axis 0 slowest, last axis
fastest). The centre label ``L // 2`` is the zero displacement.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from regframe.optim.smoothing import box_filter

METRICS = ("sad", "ssd", "neg_dot")


def displacement_offsets(radius: int, dims: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(L, D)`` integer displacements (feature voxels, column i = axis i) of the labels,
    ``L = (2 radius + 1) ** dims``, in the order of the cost-volume channels."""
    steps = range(-radius, radius + 1)
    return torch.tensor(list(itertools.product(steps, repeat=dims)), device=device, dtype=dtype)


def _pointwise_cost(fixed: Tensor, shifted: Tensor, metric: str) -> Tensor:
    if metric == "sad":
        return (fixed - shifted).abs().sum(1)
    if metric == "ssd":
        return (fixed - shifted).pow(2).sum(1)
    return -(fixed * shifted).sum(1)


def _slab_cost(fixed: Tensor, padded_moving: Tensor, offsets: list[tuple[int, ...]], radius: int,
               metric: str) -> Tensor:
    """Cost ``(B, L, *S)`` of the fixed map against the zero-padded moving map (padded by ``radius``)."""
    shape = fixed.shape[2:]
    costs = []
    for offset in offsets:
        window = (slice(None), slice(None)) + tuple(
            slice(radius + d, radius + d + n) for d, n in zip(offset, shape))
        costs.append(_pointwise_cost(fixed, padded_moving[window], metric))
    return torch.stack(costs, dim=1)


def cost_volume(fixed_feat: Tensor, moving_feat: Tensor, radius: int, metric: str = "sad",
                feature_scale: float = 1.0, box_filters: int = 1, slab_size: int | None = None) -> Tensor:
    """Cost of every integer displacement ``d`` (``|d_i| <= radius`` feature voxels) per voxel.

    ``cost[b, l, x]`` compares ``fixed_feat[b, :, x]`` with ``moving_feat[b, :, x + d_l]`` (moving
    zero-padded outside its grid), summed over channels:

    - ``"sad"``: ``sum |s fF - s fM|`` (CST, ``feature_scale`` ``s = 5``),
    - ``"ssd"``: ``sum (s fF - s fM)^2`` (ConvexAdam),
    - ``"neg_dot"``: ``-<fF, fM>`` of channel-wise L2-normalised features (SAMConvex; the scale is ignored).

    Each of the ``L`` cost maps is then box-filtered ``box_filters`` times (k3 s1 p1, see
    :func:`regframe.optim.smoothing.box_filter`). ``fixed_feat`` and ``moving_feat`` are
    ``(B, C, *S)`` on the same grid, 2D or 3D. Returns ``(B, L, *S)`` in the order of
    :func:`displacement_offsets`. ``slab_size`` computes the volume in slabs of that many voxels
    along axis 0 (with a halo for the box filter) so that the per-label intermediates never
    exceed one slab; the result is identical. Differentiable with respect to both inputs.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if fixed_feat.shape != moving_feat.shape:
        raise ValueError(f"fixed {tuple(fixed_feat.shape)} and moving {tuple(moving_feat.shape)} features differ in shape")
    dims = fixed_feat.dim() - 2
    if metric == "neg_dot":
        fixed_feat = F.normalize(fixed_feat, dim=1)
        moving_feat = F.normalize(moving_feat, dim=1)
    elif feature_scale != 1.0:
        fixed_feat = fixed_feat * feature_scale
        moving_feat = moving_feat * feature_scale
    padded = F.pad(moving_feat, (radius,) * (2 * dims))
    offsets = [tuple(int(v) for v in row) for row in displacement_offsets(radius, dims)]
    length = fixed_feat.shape[2]
    if slab_size is None or slab_size >= length:
        return box_filter(_slab_cost(fixed_feat, padded, offsets, radius, metric), box_filters)
    halo = box_filters
    slabs = []
    for start in range(0, length, slab_size):
        stop = min(start + slab_size, length)
        lo, hi = max(start - halo, 0), min(stop + halo, length)
        cost = _slab_cost(fixed_feat[:, :, lo:hi], padded[:, :, lo:hi + 2 * radius], offsets, radius, metric)
        slabs.append(box_filter(cost, box_filters)[:, :, start - lo:stop - lo])
    return torch.cat(slabs, dim=2)
