"""Dimension-agnostic spatial operations on dense displacement fields (2D and 3D).

Conventions (see README "Conventions"): tensors are ``(B, C, *S)``; a displacement ``u`` has
``C = len(S)`` channels in **voxels**, channel ``i`` along spatial axis ``i``, and is a
**backward** map on the fixed grid: ``warped(x) = moving(x + u(x))`` (the MONAI ``Warp``
convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def spatial_dims(x: Tensor) -> int:
    """Number of spatial dimensions of a ``(B, C, *S)`` tensor."""
    return x.dim() - 2


def identity_grid(shape: Sequence[int], device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Voxel coordinates of a grid, shape ``(1, D, *shape)``; channel i is the index along axis i."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


@lru_cache(maxsize=32)
def _cached_identity_grid(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``identity_grid`` kept per (shape, device, dtype); never modified in place by its users."""
    return identity_grid(shape, device=device, dtype=dtype)


def _check_field(image: Tensor, disp: Tensor) -> None:
    dims = spatial_dims(disp)
    if disp.shape[1] != dims:
        raise ValueError(f"displacement must have {dims} channels for {dims}-D data, got shape {tuple(disp.shape)}")
    if image.shape[2:] != disp.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from displacement grid {tuple(disp.shape[2:])}")


def _sampling_grid(positions: Tensor, shape: Sequence[int]) -> Tensor:
    """Voxel positions ``(..., D)`` on a grid of ``shape`` as ``grid_sample`` coordinates
    (``align_corners=True``: voxel ``i`` -> ``-1 + 2i / (n - 1)``, a singleton axis -> -1; last axis first)."""
    sizes = torch.tensor([max(n - 1, 1) for n in shape], dtype=positions.dtype, device=positions.device)
    return (positions * 2 / sizes - 1).flip(-1)


def warp(image: Tensor, disp: Tensor, mode: str = "bilinear") -> Tensor:
    """Warp ``image (B, C, *S)`` with ``disp (B, D, *S)`` (voxels): ``out(x) = image(x + disp(x))``.

    ``mode`` is ``"bilinear"`` (bi/trilinear) or ``"nearest"``; values outside the image repeat
    the border. 2D and 3D. The numerics of MONAI's ``Warp`` (voxel grid normalised with
    ``align_corners=True``, ``grid_sample`` with border padding), with the identity grid cached
    per shape, device and dtype (MONAI caches it by shape alone, so a field on a second device or
    dtype met the first one's grid).
    """
    _check_field(image, disp)
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    dims = spatial_dims(disp)
    if dims not in (2, 3):
        raise ValueError(f"warp supports 2-D and 3-D data, got {dims}-D")
    shape = tuple(disp.shape[2:])
    grid = _cached_identity_grid(shape, disp.device, disp.dtype) + disp  # (B, D, *S) voxel positions
    floating = image.is_floating_point()
    out = F.grid_sample(image if floating else image.to(disp.dtype), _sampling_grid(grid.movedim(1, -1), shape),
                        mode=mode, padding_mode="border", align_corners=True)
    return out if floating else out.to(image.dtype)


def sample_points(image: Tensor, points: Tensor) -> Tensor:
    """``image (B, C, *S)`` at ``points (B, P, D)`` (voxel coordinates of its grid): ``(B, C, P)``,
    with the numerics of :func:`warp` (linear, border values outside); 2D and 3D."""
    dims = spatial_dims(image)
    if points.dim() != 3 or points.shape[-1] != dims or points.shape[0] != image.shape[0]:
        raise ValueError(f"points must be (B, P, {dims}) for image {tuple(image.shape)}, got {tuple(points.shape)}")
    grid = _sampling_grid(points, image.shape[2:]).view(points.shape[0], -1, *([1] * (dims - 1)), dims)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.flatten(2)


def warp_labels(labels: Tensor, disp: Tensor, method: str = "nearest", num_classes: int | None = None) -> Tensor:
    """Warp an integer label map ``(B, 1, *S)`` with ``disp``.

    ``method="nearest"`` samples the nearest voxel; ``method="onehot"`` warps the one-hot encoding
    linearly and takes the arg-max (smoother boundaries, ``num_classes`` defaults to ``max+1``).
    """
    if method == "nearest":
        return warp(labels.float(), disp, mode="nearest").round().to(labels.dtype)
    if method == "onehot":
        n = int(num_classes if num_classes is not None else labels.max().item() + 1)
        onehot = F.one_hot(labels[:, 0].long(), n).movedim(-1, 1).to(disp.dtype)
        return warp(onehot, disp).argmax(dim=1, keepdim=True).to(labels.dtype)
    raise ValueError(f"method must be 'nearest' or 'onehot', got {method!r}")


def compose(first: Tensor, second: Tensor) -> Tensor:
    """Total displacement of warping with ``first`` and then with ``second``.

    ``second`` was estimated between the fixed image and ``moving`` already warped by ``first``;
    the result ``u = second + first∘(id + second)`` warps the original moving image in one step.
    """
    _check_field(first, second)
    return second + warp(first, second)


def resize_image(image: Tensor, size: Sequence[int]) -> Tensor:
    """Linear (bi/tri) resampling of ``(B, C, *S)`` to grid ``size`` over the same field of view
    (``align_corners=False``: voxel ``i`` of the new grid sits at ``(i + 0.5) * old/new - 0.5``)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[2:]) == size:
        return image
    return F.interpolate(image, size=size, mode=_INTERP[spatial_dims(image)], align_corners=False)


def resize_field(disp: Tensor, size: Sequence[int]) -> Tensor:
    """Resample a displacement field to grid ``size`` and rescale its vectors to the new voxels.

    Uses (bi/tri)linear interpolation with ``align_corners=False``, so voxel ``i`` of the new grid
    sits at ``(i + 0.5) * old/new - 0.5`` of the old grid and vectors scale by ``new/old``.
    """
    dims = spatial_dims(disp)
    size = tuple(int(s) for s in size)
    if len(size) != dims:
        raise ValueError(f"size {size} must have {dims} entries")
    old = disp.shape[2:]
    if tuple(old) == size:
        return disp
    out = resize_image(disp, size)
    scale = torch.tensor([n / o for n, o in zip(size, old)], dtype=disp.dtype, device=disp.device)
    return out * scale.view(1, dims, *([1] * dims))


def spatial_gradient(disp: Tensor) -> Tensor:
    """Central-difference gradient ``[-0.5, 0, 0.5]`` of every channel along every axis.

    Returns ``(B, C, D, *S')`` with ``S' = S - 2`` on each axis (the one-voxel border where the
    stencil does not fit is cropped): entry ``[:, c, a]`` is ``d disp_c / d x_a``.
    """
    dims = spatial_dims(disp)
    grads = []
    for axis in range(dims):
        hi = [slice(None)] * 2 + [slice(1, -1)] * dims
        lo = list(hi)
        hi[2 + axis] = slice(2, None)
        lo[2 + axis] = slice(None, -2)
        grads.append(0.5 * (disp[tuple(hi)] - disp[tuple(lo)]))
    return torch.stack(grads, dim=2)


def jacobian_determinant(disp: Tensor) -> Tensor:
    """Determinant of ``J = I + ∇u`` by central differences, shape ``(B, *S')`` with ``S' = S - 2``.

    Written out in closed form for 2x2 and 3x3 (about 3x faster than ``torch.linalg.det`` on
    full-size volumes, identical to rounding)."""
    dims = spatial_dims(disp)
    grad = spatial_gradient(disp)  # (B, C, D, *S')
    j = [[grad[:, c, a] + (1.0 if c == a else 0.0) for a in range(dims)] for c in range(dims)]
    if dims == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    if dims == 3:
        return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
                - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
                + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    jac = grad.movedim(1, -1).movedim(1, -1) + torch.eye(dims, dtype=disp.dtype, device=disp.device)
    return torch.linalg.det(jac)


def affine_to_field(matrix: Tensor, shape: Sequence[int]) -> Tensor:
    """Displacement of an affine map in voxel coordinates.

    ``matrix`` is ``(B, D, D+1)`` or ``(B, D+1, D+1)`` mapping a fixed voxel ``x`` (homogeneous) to
    the moving voxel ``A x + t``; returns ``u(x) = A x + t - x`` of shape ``(B, D, *shape)``.
    """
    dims = len(shape)
    matrix = matrix[:, :dims, :]
    if matrix.shape[1:] != (dims, dims + 1):
        raise ValueError(f"affine matrix must be (B, {dims}, {dims + 1}) or (B, {dims + 1}, {dims + 1}), got {tuple(matrix.shape)}")
    grid = identity_grid(shape, device=matrix.device, dtype=matrix.dtype).flatten(2)  # (1, D, N)
    moved = matrix[:, :, :dims] @ grid + matrix[:, :, dims:]
    return (moved - grid).view(matrix.shape[0], dims, *shape)


def normalized_to_voxel_affine(theta: Tensor, shape: Sequence[int]) -> Tensor:
    """Convert an affine on coordinates normalised to ``[-1, 1]`` per axis (``align_corners=False``,
    axis order as stored) into the equivalent ``(B, D, D+1)`` voxel-coordinate affine."""
    dims = len(shape)
    n = torch.tensor(shape, dtype=theta.dtype, device=theta.device)
    # voxel -> normalised: p = (2x + 1)/n - 1 = S x + c
    to_norm = torch.eye(dims + 1, dtype=theta.dtype, device=theta.device).repeat(theta.shape[0], 1, 1)
    to_norm[:, range(dims), range(dims)] = 2.0 / n
    to_norm[:, :dims, dims] = 1.0 / n - 1.0
    full = torch.eye(dims + 1, dtype=theta.dtype, device=theta.device).repeat(theta.shape[0], 1, 1)
    full[:, :dims, :] = theta[:, :dims, :]
    return (torch.linalg.inv(to_norm) @ full @ to_norm)[:, :dims, :]
