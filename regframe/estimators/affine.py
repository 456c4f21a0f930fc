"""Iterative affine registration: a training-free baseline and pre-alignment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from regframe.estimators.base import DisplacementEstimator
from regframe.losses import local_ncc
from regframe.spatial import affine_to_field, normalized_to_voxel_affine, resize_image, warp


class IterativeAffineEstimator(DisplacementEstimator):
    """Affine registration by Adam on local NCC over a coarse-to-fine image pyramid.

    The affine acts on coordinates normalised to ``[-1, 1]`` per axis, so one matrix serves every
    level; it is converted to a voxel displacement at the input resolution.

    Args:
        levels: downsampling factors, coarse to fine (e.g. ``(4, 2)``).
        iterations: Adam iterations per level.
        lr: Adam learning rate on the matrix entries.
        ncc_kernel: window of the local NCC in voxels (at each level).
        min_size: a level is never coarser than this many voxels along its shortest axis.
    """

    def __init__(self, levels: Sequence[int] = (4, 2), iterations: int = 60, lr: float = 0.01,
                 ncc_kernel: int = 7, min_size: int = 16) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.iterations = iterations
        self.lr = lr
        self.ncc_kernel = ncc_kernel
        self.min_size = min_size

    @staticmethod
    def _standardise(x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        return (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        dims = fixed.dim() - 2
        batch = fixed.shape[0]
        eye = torch.eye(dims, dims + 1, dtype=torch.float32, device=fixed.device)
        theta = eye.repeat(batch, 1, 1).requires_grad_(True)
        fixed, moving = self._standardise(fixed.float()), self._standardise(moving.float())
        with torch.enable_grad():
            optimizer = torch.optim.Adam([theta], lr=self.lr)
            coarsest = max(1, min(fixed.shape[2:]) // self.min_size)
            for factor in sorted({min(f, coarsest) for f in self.levels}, reverse=True):
                size = [s // factor for s in fixed.shape[2:]]
                fixed_l, moving_l = resize_image(fixed, size), resize_image(moving, size)
                for _ in range(self.iterations):
                    optimizer.zero_grad()
                    disp = affine_to_field(normalized_to_voxel_affine(theta, size), size)
                    loss = local_ncc(fixed_l, warp(moving_l, disp), kernel_size=self.ncc_kernel)
                    loss.backward()
                    optimizer.step()
        shape = fixed.shape[2:]
        return affine_to_field(normalized_to_voxel_affine(theta.detach(), shape), shape)
