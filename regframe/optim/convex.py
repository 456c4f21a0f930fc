"""Coupled convex optimisation over a cost volume (Heinrich et al. 2014; ConvexAdam; CST).

Minimises ``D(u) + lambda R(u)`` by alternating a point-wise search ``v`` over the discrete
displacements and a smooth field ``ubar`` (box-filtered ``v``), coupled by
``w ||d - ubar||^2`` with ``w`` growing along ``schedule``. Displacements and the penalty are in
**voxel units of the cost grid**. Labels and offsets follow :mod:`regframe.optim.correlation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from regframe.optim.smoothing import box_filter


def _coupling(offsets: Tensor, ubar: Tensor) -> Tensor:
    """``||d_l - ubar(x)||^2`` for all labels, shape ``(B, L, *S)``."""
    flat = ubar.flatten(2)  # (B, D, N)
    cross = torch.einsum("ld,bdn->bln", offsets, flat)
    sq = offsets.pow(2).sum(1).view(1, -1, 1) - 2 * cross + flat.pow(2).sum(1, keepdim=True)
    return sq.view(ubar.shape[0], offsets.shape[0], *ubar.shape[2:]).clamp_min(0)


def _expectation(weights: Tensor, offsets: Tensor) -> Tensor:
    """Displacement ``(B, D, *S)`` = sum over labels of ``weights (B, L, *S)`` times ``offsets (L, D)``."""
    return torch.einsum("bl...,ld->bd...", weights, offsets)


def _check(cost: Tensor, offsets: Tensor) -> Tensor:
    if offsets.dim() != 2 or offsets.shape[0] != cost.shape[1] or offsets.shape[1] != cost.dim() - 2:
        raise ValueError(f"offsets {tuple(offsets.shape)} do not match cost volume {tuple(cost.shape)}")
    return offsets.to(device=cost.device, dtype=cost.dtype)


def soft_coupled_convex(cost: Tensor, offsets: Tensor, schedule: Sequence[float] = (0.003, 0.03, 0.3),
                        temperature: float = 20.0, smooth_iters: int = 1) -> Tensor:
    """Differentiable coupled convex optimisation (CST).

    The arg-min is replaced by the expectation of the offsets under ``softmax(-temperature * c)``;
    the initial field uses the raw cost, every round the cost plus ``w ||d - ubar||^2``; after each
    step the field is box-filtered ``smooth_iters`` times. Nothing is detached, so gradients reach
    the features through every round. ``cost (B, L, *S)``, ``offsets (L, D)``; returns ``ubar``
    ``(B, D, *S)`` in voxels of the cost grid.
    """
    offsets = _check(cost, offsets)
    ubar = box_filter(_expectation(torch.softmax(-temperature * cost, dim=1), offsets), smooth_iters)
    for weight in schedule:
        coupled = cost + weight * _coupling(offsets, ubar)
        ubar = box_filter(_expectation(torch.softmax(-temperature * coupled, dim=1), offsets), smooth_iters)
    return ubar


@torch.no_grad()
def hard_coupled_convex(cost: Tensor, offsets: Tensor,
                        schedule: Sequence[float] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                        smooth_iters: int = 1, slab_size: int | None = None) -> Tensor:
    """Coupled convex optimisation with hard arg-min (ConvexAdam ``smooth_iters=1``, SAMConvex 3).

    Not differentiable. ``slab_size`` evaluates the coupled cost in slabs along axis 0 to bound
    memory. ``cost (B, L, *S)``, ``offsets (L, D)``; returns ``ubar (B, D, *S)`` in voxels.
    """
    offsets = _check(cost, offsets)
    step = slab_size or cost.shape[2]
    last = cost.movedim(1, -1)  # (B, *S, L): the arg-min runs over contiguous labels
    norms = offsets.pow(2).sum(1)  # |d_l|²; |ubar|² is the same for every label and is left out

    def search(ubar: Tensor | None, weight: float) -> Tensor:
        parts = []
        for start in range(0, cost.shape[2], step):
            c = last[:, start:start + step].contiguous()
            if ubar is not None:
                c += weight * (norms - 2 * ubar[:, :, start:start + step].movedim(1, -1) @ offsets.T)
            parts.append(offsets[c.argmin(dim=-1)].movedim(-1, 1))
        return torch.cat(parts, dim=2)

    ubar = box_filter(search(None, 0.0), smooth_iters)
    for weight in schedule:
        ubar = box_filter(search(ubar, weight), smooth_iters)
    return ubar
