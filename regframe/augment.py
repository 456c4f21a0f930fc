"""Batched random affine augmentation of image pairs with consistent displacement targets (on device)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from regframe.spatial import affine_to_field, identity_grid, normalized_to_voxel_affine, warp


class AugmentedPair(NamedTuple):
    fixed: Tensor  # (B, 1, *S)
    moving: Tensor  # (B, 1, *S)
    target: Tensor | None  # (B, D, *T) in voxels of its own grid T


def random_theta(batch: int, dims: int, sigma: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, D, D+1)`` affines on normalised coordinates: identity plus ``N(0, sigma^2)`` on every entry."""
    noise = torch.randn(batch, dims, dims + 1, generator=generator, dtype=dtype).to(device)
    return torch.eye(dims, dims + 1, dtype=dtype, device=device) + sigma * noise


def _apply(matrix: Tensor, points: Tensor) -> Tensor:
    """``matrix (B, D, D+1)`` applied to voxel coordinates ``points (B, D, *S)``."""
    dims = matrix.shape[1]
    flat = points.flatten(2)
    return (matrix[:, :, :dims] @ flat + matrix[:, :, dims:]).view_as(points)


def _invert(matrix: Tensor) -> Tensor:
    dims = matrix.shape[1]
    full = torch.eye(dims + 1, dtype=matrix.dtype, device=matrix.device).repeat(matrix.shape[0], 1, 1)
    full[:, :dims] = matrix
    return torch.linalg.inv(full)[:, :dims]


def transform_target(target: Tensor, theta_fixed: Tensor, theta_moving: Tensor) -> Tensor:
    """The displacement between the augmented images, given ``target`` between the originals.

    With ``F'(x) = F(A_F x)``, ``M'(x) = M(A_M x)`` and ``M(y + u(y)) = F(y)``, the field that
    aligns ``M'`` to ``F'`` is ``u'(x) = A_M^{-1}(A_F x + u(A_F x)) - x`` (voxels of the target grid;
    the normalised affines give the voxel affines of any grid).
    """
    shape = target.shape[2:]
    a_fixed = normalized_to_voxel_affine(theta_fixed, shape)
    a_moving_inv = _invert(normalized_to_voxel_affine(theta_moving, shape))
    grid = identity_grid(shape, device=target.device, dtype=target.dtype)
    field_fixed = affine_to_field(a_fixed, shape)
    mapped = grid + field_fixed + warp(target, field_fixed)
    return _apply(a_moving_inv, mapped) - grid


class PairAffineAugmentation:
    """Different random affines for fixed and moving (CST's asymmetric learning stream).

    ``A_F = I + N(0, sigma_fixed^2)`` and ``A_M = A_F + N(0, sigma_moving_extra^2)`` entry-wise on
    the ``D x (D+1)`` part of the normalised homogeneous matrix (CST: 0.075 and 0.05). Images are
    resampled linearly (border values repeat); a displacement target is transformed with
    :func:`transform_target`. Works on whatever device the batch is on.
    """

    def __init__(self, sigma_fixed: float = 0.075, sigma_moving_extra: float = 0.05, seed: int | None = None) -> None:
        self.sigma_fixed = sigma_fixed
        self.sigma_moving_extra = sigma_moving_extra
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def sample(self, batch: int, dims: int, device: torch.device | str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        theta_fixed = random_theta(batch, dims, self.sigma_fixed, self.generator, device, dtype)
        extra = random_theta(batch, dims, self.sigma_moving_extra, self.generator, device, dtype)
        theta_moving = theta_fixed + extra - torch.eye(dims, dims + 1, dtype=dtype, device=device)
        return theta_fixed, theta_moving

    def __call__(self, fixed: Tensor, moving: Tensor, target: Tensor | None = None,
                 thetas: Sequence[Tensor] | None = None) -> AugmentedPair:
        shape = fixed.shape[2:]
        theta_fixed, theta_moving = thetas if thetas is not None else self.sample(
            fixed.shape[0], len(shape), fixed.device, fixed.dtype)
        fixed_aug = warp(fixed, affine_to_field(normalized_to_voxel_affine(theta_fixed, shape), shape))
        moving_aug = warp(moving, affine_to_field(normalized_to_voxel_affine(theta_moving, shape), shape))
        new_target = transform_target(target, theta_fixed, theta_moving) if target is not None else None
        return AugmentedPair(fixed_aug, moving_aug, new_target)
