"""Point sets under a displacement field: sampling, mapping in both directions, voxel <-> mm.

A field ``u`` (``(D, *S)``, voxels) is a backward map on the fixed grid: ``warped(x) = moving(x + u(x))``.
So a point ``x`` of the fixed grid corresponds to ``x + u(x)`` on the moving grid
(:func:`fixed_to_moving`), and a moving point ``y`` corresponds to the solution of
``x + u(x) = y`` (:func:`moving_to_fixed`, fixed-point iteration). Points are ``(N, D)`` voxel
coordinates in stored axis order unless a function says mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from regframe.spatial import sample_points


def sample_field(disp: Tensor, points: Tensor) -> Tensor:
    """Field ``disp (D, *S)`` sampled at ``points (N, D)`` (voxels) with (bi/tri)linear
    interpolation, clamped to the border; returns ``(N, D)`` in the dtype of ``disp``."""
    dims = disp.shape[0]
    if disp.dim() != dims + 1:
        raise ValueError(f"displacement must be (D, *S) with D spatial dims, got {tuple(disp.shape)}")
    if points.dim() != 2 or points.shape[1] != dims:
        raise ValueError(f"points must be (N, {dims}), got {tuple(points.shape)}")
    return sample_points(disp[None], points.to(disp)[None])[0].T


def fixed_to_moving(disp: Tensor, points: Tensor) -> Tensor:
    """Moving-grid voxel positions ``x + u(x)`` of fixed-grid points ``x (N, D)``; float64."""
    points = points.double()
    return points + sample_field(disp.double(), points)


@dataclass
class Inversion:
    """Result of :func:`moving_to_fixed`: fixed-grid ``points (N, D)``, the ``residual (N,)`` ``|x + u(x) - y|``
    in voxels, and the number of ``iterations`` run."""

    points: Tensor
    residual: Tensor
    iterations: int


def moving_to_fixed(disp: Tensor, points: Tensor, tolerance: float = 1e-5, max_iterations: int = 200) -> Inversion:
    """Fixed-grid positions ``x`` with ``x + u(x) = y`` for moving-grid points ``y (N, D)`` (voxels).

    Fixed-point iteration ``x_{k+1} = y - u(x_k)`` from ``x_0 = y``, until no point moves by more than
    ``tolerance`` voxels or ``max_iterations``. It converges where ``u`` is a contraction (spatial
    derivatives below 1, i.e. a field without folding); check ``residual`` for the other points.
    """
    field = disp.double()
    target = points.double()
    current = target.clone()
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        updated = target - sample_field(field, current)
        step = (updated - current).abs().max().item() if len(current) else 0.0
        current = updated
        if step < tolerance:
            break
    residual = (current + sample_field(field, current) - target).norm(dim=1)
    return Inversion(current, residual, iterations)


def apply_affine(affine: Tensor, points: Tensor) -> Tensor:
    """Homogeneous ``affine (..., D+1, D+1)`` applied to ``points (..., N, D)``: ``A x + t`` (batched
    when both carry leading batch axes)."""
    dims = points.shape[-1]
    affine = affine.to(points)
    return points @ affine[..., :dims, :dims].transpose(-1, -2) + affine[..., None, :dims, dims]


def voxel_to_world(affine: np.ndarray, points: Tensor) -> Tensor:
    """World coordinates (mm) of voxel ``points (N, 3)`` through a 4x4 voxel-to-world ``affine``; float64."""
    return apply_affine(torch.as_tensor(affine, dtype=torch.float64), points.double())


def world_to_voxel(affine: np.ndarray, points: Tensor) -> Tensor:
    """Voxel coordinates of world ``points (N, 3)`` (mm) on the grid of ``affine``; float64."""
    return apply_affine(torch.as_tensor(np.linalg.inv(affine), dtype=torch.float64), points.double())


def jittered(points: Tensor, sigma_mm: float, generator: torch.Generator | None = None) -> Tensor:
    """``points (..., 3)`` mm plus Gaussian noise of ``sigma_mm`` per axis (drawn on the CPU in the
    points' dtype from ``generator``); ``sigma_mm = 0`` returns ``points`` and draws nothing."""
    if not sigma_mm:
        return points
    return points + sigma_mm * torch.randn(points.shape, generator=generator, dtype=points.dtype).to(points.device)
