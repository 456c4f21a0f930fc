"""Augmented views of one scan with known point correspondences (for contrastive embeddings).

A :class:`View` is a crop of a scan resampled through a similarity transform (scale, rotation,
translation). Points are voxel coordinates (index units, float, axis order of the array); the
scan point of view point ``v`` is ``centre_scan + matrix @ (v - centre_view)``, so the positive of a
point in one view is found in another view by mapping it through the scan, at sub-voxel precision.
Sampling is trilinear (bilinear in 2D) with ``align_corners=True`` conventions: voxel ``i`` sits at
coordinate ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from regframe.spatial import identity_grid, sample_points


def sample_at(volume: Tensor, points: Tensor) -> Tensor:
    """Values of ``volume (C, *S)`` at voxel coordinates ``points (N, D)``, interpolated: ``(N, C)``.
    Points outside the grid take the nearest border value (:func:`regframe.spatial.sample_points`)."""
    return sample_points(volume[None], points[None])[0].T


def grid_points(shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Voxel coordinates of every voxel of ``shape`` in C order, ``(prod(shape), D)`` float."""
    return identity_grid(shape, device)[0].flatten(1).T


@dataclass(frozen=True)
class View:
    """One augmented view: ``image (C, *V)`` and its map to the scan's voxel coordinates."""

    image: Tensor
    matrix: Tensor        # (D, D) scan voxels per view voxel: rotation · scale
    centre_view: Tensor   # (D,)
    centre_scan: Tensor   # (D,)

    def to_scan(self, points: Tensor) -> Tensor:
        """Scan coordinates ``(N, D)`` of view coordinates ``points (N, D)``."""
        return self.centre_scan + (points - self.centre_view) @ self.matrix.T

    def from_scan(self, points: Tensor) -> Tensor:
        """View coordinates ``(N, D)`` of scan coordinates ``points (N, D)``."""
        return self.centre_view + (points - self.centre_scan) @ torch.linalg.inv(self.matrix).T

    def contains(self, points: Tensor, margin: float = 0.0) -> Tensor:
        """``(N,)`` bool: view coordinates inside the view's grid by at least ``margin`` voxels."""
        sizes = torch.tensor(self.image.shape[1:], dtype=points.dtype, device=points.device)
        return ((points >= margin) & (points <= sizes - 1 - margin)).all(dim=1)


def resample_view(scan: Tensor, size: Sequence[int], matrix: Tensor, centre_scan: Tensor) -> View:
    """The view of ``scan (C, *S)`` of ``size`` voxels whose centre sits at ``centre_scan``."""
    centre_view = (torch.tensor(list(size), dtype=torch.float32, device=scan.device) - 1) / 2
    view = View(scan.new_zeros(0), matrix, centre_view, centre_scan)
    points = view.to_scan(grid_points(size, scan.device))
    image = sample_at(scan, points).T.reshape(scan.shape[0], *size)
    return View(image, matrix, centre_view, centre_scan)


def random_rotation(dims: int, max_degrees: float, generator: torch.Generator | None = None) -> Tensor:
    """A rotation matrix ``(D, D)`` by an angle uniform in ``±max_degrees`` (3D: about a random axis)."""
    angle = math.radians(max_degrees) * (2 * float(torch.rand((), generator=generator)) - 1)
    if dims == 2:
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([[c, -s], [s, c]])
    axis = F.normalize(torch.randn(3, generator=generator), dim=0)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return torch.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross  # Rodrigues


def random_view_pair(scan: Tensor, size: Sequence[int], scale_range: tuple[float, float] = (0.8, 1.25),
                     max_degrees: float = 10.0, max_offset: float = 0.5,
                     generator: torch.Generator | None = None) -> tuple[View, View]:
    """Two overlapping views of ``scan (C, *S)``: each with its own scale (scan voxels per view voxel,
    log-uniform in ``scale_range``) and rotation; view A centred uniformly where it fits, view B's
    centre offset from A's by up to ``max_offset`` × the view size per axis (kept inside the scan)."""
    dims = scan.dim() - 1
    shape = torch.tensor(scan.shape[1:], dtype=torch.float32)
    view_size = torch.tensor(list(size), dtype=torch.float32)

    def uniform(low: Tensor, high: Tensor) -> Tensor:
        return low + (high - low) * torch.rand(low.shape, generator=generator)

    def matrix() -> Tensor:
        low, high = (math.log(v) for v in scale_range)
        scale = math.exp(low + (high - low) * float(torch.rand((), generator=generator)))
        return random_rotation(dims, max_degrees, generator) * scale

    half = (view_size - 1) / 2
    margin = torch.minimum(half, (shape - 1) / 2)
    centre_a = uniform(margin, shape - 1 - margin)
    centre_b = (centre_a + uniform(-max_offset * view_size, max_offset * view_size)).clamp(min=margin,
                                                                                            max=shape - 1 - margin)
    return (resample_view(scan, size, matrix().to(scan.device), centre_a.to(scan.device)),
            resample_view(scan, size, matrix().to(scan.device), centre_b.to(scan.device)))
