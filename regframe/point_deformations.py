"""Random known deformations of a point cloud, to make synthetic training pairs from one cloud.

A deformation is a forward map ``φ(p) = p + u(p)`` (mm) applied to points ``(B, N, 3)`` mm; each batch
item has its own draw:

- ``rigid``: ``φ(p) = R (p − c) + c + t`` with ``c`` the cloud's centroid, ``R`` a rotation by an angle
  uniform in ``[−max_rotation_deg, max_rotation_deg]`` about a uniformly random axis and ``t``
  uniform in ``[−max_translation_mm, max_translation_mm]³``.
- ``field``: ``u(p) = Σ_k w_k exp(−‖p − c_k‖² / (2 σ²))``, ``num_centres`` centres ``c_k`` drawn from the
  cloud, weights ``w_k`` uniform in ``[−amplitude_mm, amplitude_mm]³``, ``σ = width_mm``.

:func:`synthetic_pair` turns a source cloud into a fixed cloud and a moving cloud made of disjoint
random rows (no point occurs in both), the moving rows mapped by ``φ``, and the known displacement
``u`` at the fixed points: ``x + u(x)`` is where fixed point ``x`` lies in the deformed cloud.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.points import jittered

KINDS = ("rigid", "field")


def random_rotations(batch: int, max_angle_deg: float, generator: torch.Generator | None = None) -> Tensor:
    """``batch`` rotation matrices ``(B, 3, 3)`` (Rodrigues' formula): uniformly random axes, angles
    uniform in ``[−max_angle_deg, max_angle_deg]`` degrees."""
    axis = torch.randn(batch, 3, generator=generator)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    angle = (2 * torch.rand(batch, generator=generator) - 1) * math.radians(max_angle_deg)
    cross = torch.zeros(batch, 3, 3)
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    cross = cross - cross.transpose(1, 2)
    sin, cos = angle.sin().view(-1, 1, 1), angle.cos().view(-1, 1, 1)
    return torch.eye(3).expand(batch, 3, 3) + sin * cross + (1 - cos) * cross @ cross


@dataclass(frozen=True)
class RigidDeformation:
    """``φ(p) = rotation (p − centre) + centre + translation`` per batch item (``(B, 3, 3)``, ``(B, 3)``,
    ``(B, 3)`` mm)."""

    rotation: Tensor
    centre: Tensor
    translation: Tensor

    def displacement(self, points: Tensor) -> Tensor:
        """``u(p) = φ(p) − p`` ``(B, N, 3)`` mm at ``points (B, N, 3)`` mm."""
        centred = points - self.centre.unsqueeze(1)
        return centred @ self.rotation.transpose(1, 2) - centred + self.translation.unsqueeze(1)


@dataclass(frozen=True)
class RBFDeformation:
    """``u(p) = Σ_k weights_k exp(−‖p − centres_k‖² / (2 width²))`` per batch item (``centres (B, K, 3)``
    mm, ``weights (B, K, 3)`` mm, ``width`` mm)."""

    centres: Tensor
    weights: Tensor
    width: float

    def displacement(self, points: Tensor) -> Tensor:
        """``u(p)`` ``(B, N, 3)`` mm at ``points (B, N, 3)`` mm."""
        kernel = torch.exp(-torch.cdist(points, self.centres).square() / (2 * self.width**2))  # (B, N, K)
        return kernel @ self.weights


@dataclass(frozen=True)
class DeformationSampler:
    """Draws random deformations of ``kind`` (``"rigid"`` or ``"field"``; parameters in the module docstring)."""

    kind: str = "rigid"
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 10.0
    amplitude_mm: float = 10.0
    width_mm: float = 40.0
    num_centres: int = 8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RegframeInputError(f"deformation kind must be one of {KINDS}, got {self.kind!r}")
        if self.width_mm <= 0 or self.num_centres < 1:
            raise RegframeInputError(f"deformation: need width_mm > 0 and num_centres >= 1, got "
                                     f"width_mm={self.width_mm}, num_centres={self.num_centres}")

    def __call__(self, points: Tensor, generator: torch.Generator | None = None) -> RigidDeformation | RBFDeformation:
        """A deformation per batch item of ``points (B, N, 3)`` mm (the centroid / RBF centres come from them)."""
        batch, count = points.shape[:2]
        if self.kind == "rigid":
            rotation = random_rotations(batch, self.max_rotation_deg, generator).to(points)
            translation = ((2 * torch.rand(batch, 3, generator=generator) - 1) * self.max_translation_mm).to(points)
            return RigidDeformation(rotation, points.mean(dim=1), translation)
        rows = torch.stack([torch.randperm(count, generator=generator)[: self.num_centres] for _ in range(batch)])
        centres = torch.gather(points, 1, rows.to(points.device).unsqueeze(-1).expand(-1, -1, 3))
        weights = ((2 * torch.rand(batch, rows.shape[1], 3, generator=generator) - 1) * self.amplitude_mm).to(points)
        return RBFDeformation(centres, weights, self.width_mm)


def synthetic_pair(source: Tensor, fixed_count: int, deformation: RigidDeformation | RBFDeformation,
                   generator: torch.Generator | None = None, disjoint: bool = True,
                   moving_jitter_mm: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed cloud ``(B, fixed_count, 3)``, moving cloud and the displacement ``(B, fixed_count, 3)`` at
    the fixed points (all mm) from ``source (B, M, 3)`` mm, the moving rows mapped by ``deformation``.
    ``disjoint``: per item a random split of the rows (moving: the other ``M − fixed_count``); else
    the fixed cloud is a random subset and the moving cloud all ``M`` rows, shuffled (as
    :func:`regframe.point_clouds.draw_clouds` with independent subsets); ``moving_jitter_mm``: Gaussian
    noise (mm per axis) added to the moving cloud after the deformation."""
    batch, count = source.shape[:2]
    if not 0 < fixed_count < count:
        raise RegframeInputError(f"synthetic pair: fixed_count must be between 1 and {count - 1} "
                                 f"(the source cloud has {count} points), got {fixed_count}")
    order = torch.stack([torch.randperm(count, generator=generator) for _ in range(batch)]).to(source.device)
    shuffled = torch.gather(source, 1, order.unsqueeze(-1).expand(-1, -1, 3))
    fixed, moving_source = shuffled[:, :fixed_count], shuffled[:, fixed_count:]
    if not disjoint:
        reorder = torch.stack([torch.randperm(count, generator=generator) for _ in range(batch)]).to(source.device)
        moving_source = torch.gather(shuffled, 1, reorder.unsqueeze(-1).expand(-1, -1, 3))
    moving = jittered(moving_source + deformation.displacement(moving_source), moving_jitter_mm, generator)
    return fixed, moving, deformation.displacement(fixed)
