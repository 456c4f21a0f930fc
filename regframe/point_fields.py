"""Dense displacement fields from sparse displacements at points (cubic polyharmonic spline).

Coordinates: a point's mm position is its voxel index times the spacing, along the array axes of
the fixed grid (``mm = voxel · spacing``, origin at the centre of voxel ``(0, 0, 0)``, no
direction matrix). Displacements in mm convert to regframe's dense convention — voxels, channel
``i`` along array axis ``i``, backward map on the fixed grid — by dividing channel ``i`` by
``spacing[i]``.

The spline ``f(x) = Σ_j w_j φ(‖x − p_j‖) + a_0 + A x`` with ``φ(r) = r³`` solves
``(Φ + λI) w + P a = d``, ``Pᵀ w = 0`` (``λ = smooth_weight``, mm³): with ``λ = 0`` it interpolates
exactly and reproduces affine (so constant) displacements exactly; ``λ > 0`` trades fidelity for
smoothness. ``r³`` rather than the 3D thin-plate kernel ``−r`` because the latter has a cone-shaped
kink at every point (a discontinuous Jacobian there); ``r³`` is twice differentiable. It is
evaluated on a grid of every ``grid_stride``-th voxel (plus the last one) and trilinearly
interpolated to the full grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from regframe.errors import RegframeInputError


def _kernel(first: Tensor, second: Tensor) -> Tensor:
    """``φ(‖a − b‖) = ‖a − b‖³`` for rows of ``first (P, 3)`` and ``second (Q, 3)``: ``(P, Q)``."""
    return torch.cdist(first, second).pow(3)


def _affine_basis(points: Tensor) -> Tensor:
    """``[1, x, y, z]`` per point: ``(P, 4)``."""
    return torch.cat([points.new_ones(points.shape[0], 1), points], dim=1)


def fit_spline(points: Tensor, values: Tensor, smooth_weight: float = 0.0) -> tuple[Tensor, Tensor]:
    """Kernel weights ``(N, C)`` and affine coefficients ``(4, C)`` of the spline through ``values (N, C)``
    at ``points (N, 3)`` mm (float64)."""
    n = points.shape[0]
    basis = _affine_basis(points)
    system = points.new_zeros(n + 4, n + 4)
    system[:n, :n] = _kernel(points, points) + smooth_weight * torch.eye(n, dtype=points.dtype, device=points.device)
    system[:n, n:] = basis
    system[n:, :n] = basis.T
    right = torch.cat([values, values.new_zeros(4, values.shape[1])])
    solution = torch.linalg.solve(system, right)
    return solution[:n], solution[n:]


def evaluate_spline(points: Tensor, weights: Tensor, affine: Tensor, at: Tensor, chunk: int = 8192) -> Tensor:
    """Spline fitted at ``points (N, 3)`` evaluated at ``at (P, 3)`` mm: ``(P, C)``."""
    parts = [_kernel(block, points) @ weights + _affine_basis(block) @ affine for block in at.split(chunk)]
    return torch.cat(parts)


def dense_field(fixed_points: Tensor, displacements: Tensor, shape: Sequence[int], spacing: Sequence[float],
                smooth_weight: float = 0.0, grid_stride: int = 4) -> Tensor:
    """Dense backward field ``(B, 3, *shape)`` in voxels from ``displacements (B, N, 3)`` mm at
    ``fixed_points (B, N, 3)`` mm on a fixed grid of ``shape`` with ``spacing`` (mm per voxel)."""
    if fixed_points.dim() != 3 or fixed_points.shape[-1] != 3 or displacements.shape != fixed_points.shape:
        raise RegframeInputError(f"dense_field: fixed_points and displacements must both be (B, N, 3) mm, got "
                                 f"{tuple(fixed_points.shape)} and {tuple(displacements.shape)}")
    if len(shape) != 3 or min(shape) < 2 or len(spacing) != 3 or min(spacing) <= 0 or grid_stride < 1:
        raise RegframeInputError(f"dense_field: need a 3D shape (each size >= 2), 3 positive spacings and "
                                 f"grid_stride >= 1; got "
                                 f"shape={list(shape)}, spacing={list(spacing)}, grid_stride={grid_stride}")
    spacing_mm = torch.tensor(spacing, dtype=torch.float64, device=fixed_points.device)
    axes = [torch.unique(torch.cat([torch.arange(0, size, grid_stride), torch.tensor([size - 1])])).double()
            for size in shape]
    coarse_shape = [len(axis) for axis in axes]
    coarse_mm = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).to(spacing_mm) * spacing_mm
    fields = []
    for points, values in zip(fixed_points.double(), displacements.double()):
        weights, affine = fit_spline(points, values / spacing_mm, smooth_weight)
        coarse = evaluate_spline(points, weights, affine, coarse_mm)
        fields.append(coarse.T.reshape(3, *coarse_shape))
    coarse_fields = torch.stack(fields)
    if coarse_shape != list(shape):
        coarse_fields = _resample_nonuniform(coarse_fields, axes, shape)
    return coarse_fields.to(displacements.dtype)


def _resample_nonuniform(coarse: Tensor, axes: list[Tensor], shape: Sequence[int]) -> Tensor:
    """Trilinear interpolation of ``coarse (B, C, *G)`` sampled at voxel positions ``axes`` to the full
    grid ``shape`` (the last coarse interval may be shorter than the others)."""
    grid_axes = []
    for axis, size in zip(axes, shape):
        voxels = torch.arange(size, dtype=torch.float64, device=coarse.device)
        interval = torch.searchsorted(axis.to(coarse.device), voxels, right=True).clamp(1, len(axis) - 1) - 1
        left, right = axis[interval].to(coarse.device), axis[interval + 1].to(coarse.device)
        position = interval + (voxels - left) / (right - left)  # in coarse-index units
        grid_axes.append(2 * position / max(len(axis) - 1, 1) - 1)
    mesh = torch.stack(torch.meshgrid(*grid_axes, indexing="ij"), dim=-1).flip(-1)  # grid_sample: last axis first
    grid = mesh.unsqueeze(0).expand(coarse.shape[0], *mesh.shape).to(coarse)
    return F.grid_sample(coarse, grid, mode="bilinear", padding_mode="border", align_corners=True)
