"""Förstner keypoints: distinctive points of an image (2D or 3D) inside a mask, as used for
keypoint-based lung registration (Hansen & Heinrich, IPMI 2021; CST's lung experiment).

The structure tensor ``T = G_sigma * (grad I grad I^T)`` (central 5-point gradients, Gaussian
smoothing with ``sigma`` voxels) measures how much the image varies in every direction around a
voxel. The Förstner distinctiveness ``1 / trace(T^-1) = det(T) / trace(adj(T))`` is large only
where the image varies along all axes (corners, blobs, vessel branchings) and zero on flat
regions, edges (2D, 3D) and planes (3D). Keypoints are its local maxima in a cubic window
(non-maximum suppression by max-pooling) above ``threshold``, inside the mask eroded by
``mask_erosion`` voxels. Defaults follow the public code of Hansen & Heinrich: ``sigma=1.4``,
window 9, threshold ``1e-8``; on 192x192x208 lung CTs (1.75x1.25x1.75 mm) this gives the
"around 1k / 2k points" of the CST paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GRADIENT_STENCIL = (1.0 / 12.0, -8.0 / 12.0, 0.0, 8.0 / 12.0, -1.0 / 12.0)  # 4th-order central difference
_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


def _filter_axis(volume: Tensor, weights: Tensor, axis: int) -> Tensor:
    """1-D correlation of ``volume (C, 1, *S)`` with ``weights (K,)`` (K odd) along spatial ``axis``,
    replicate padding; same shape out (a sum of shifted copies: faster than a 1-D conv on CPU)."""
    dims = volume.dim() - 2
    radius = weights.numel() // 2
    pad = [0] * (2 * dims)
    pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius  # F.pad lists the last axis first
    padded = F.pad(volume, pad, mode="replicate")
    size = volume.shape[2 + axis]
    out = torch.zeros_like(volume)
    for k, weight in enumerate(weights.tolist()):
        if weight != 0.0:
            out.add_(padded.narrow(2 + axis, k, size), alpha=weight)
    return out


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` (voxels), radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def structure_tensor(image: Tensor, sigma: float) -> Tensor:
    """Gaussian-smoothed structure tensor of ``image (*S)`` (D = 2 or 3 spatial axes):
    ``(*S, D, D)``, entries ``G_sigma * (d_i I d_j I)`` (intensity² per voxel²)."""
    dims = image.dim()
    if dims not in _POOL:
        raise ValueError(f"image must be 2-D or 3-D, got shape {tuple(image.shape)}")
    volume = image[None, None].float()
    stencil = torch.tensor(GRADIENT_STENCIL, dtype=volume.dtype, device=volume.device)
    gradients = [_filter_axis(volume, stencil, axis) for axis in range(dims)]
    pairs = [(i, j) for i in range(dims) for j in range(i, dims)]
    products = torch.cat([gradients[i] * gradients[j] for i, j in pairs])  # (P, 1, *S)
    kernel = gaussian_kernel(sigma, volume.dtype).to(volume.device)
    for axis in range(dims):
        products = _filter_axis(products, kernel, axis)
    tensor = image.new_zeros((*image.shape, dims, dims), dtype=volume.dtype)
    for k, (i, j) in enumerate(pairs):
        tensor[..., i, j] = tensor[..., j, i] = products[k, 0]
    return tensor


def foerstner_distinctiveness(image: Tensor, sigma: float = 1.4) -> Tensor:
    """``1 / trace(T^-1)`` of the structure tensor ``T`` of ``image (*S)``, computed as
    ``det(T) / trace(adj(T))`` (0 where ``T`` has rank < D); ``(*S)``, intensity² per voxel²."""
    tensor = structure_tensor(image, sigma).double()
    dims = tensor.shape[-1]
    determinant = torch.linalg.det(tensor)
    if dims == 2:
        adjugate_trace = tensor[..., 0, 0] + tensor[..., 1, 1]
    else:  # sum of the principal 2x2 minors
        adjugate_trace = sum(tensor[..., i, i] * tensor[..., j, j] - tensor[..., i, j] ** 2
                             for i in range(dims) for j in range(i + 1, dims))
    scale = tensor.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300) ** (dims - 1)
    defined = adjugate_trace > 1e-12 * scale  # rank >= D-1 (relative to the tensor's magnitude)
    ratio = torch.where(defined, determinant / torch.where(defined, adjugate_trace, 1.0), 0.0)
    return ratio.clamp_min(0.0).to(image.dtype if image.is_floating_point() else torch.float32)


def erode(mask: Tensor, voxels: int) -> Tensor:
    """Binary erosion of ``mask (*S)`` by a cube of radius ``voxels`` (outside the image counts as inside)."""
    if voxels <= 0:
        return mask.bool()
    outside = (~mask.bool()).float()[None, None]
    grown = _POOL[mask.dim()](outside, 2 * voxels + 1, stride=1, padding=voxels)
    return grown[0, 0] == 0


def foerstner_keypoints(image: Tensor, mask: Tensor | None = None, sigma: float = 1.4, nms_window: int = 9,
                        threshold: float = 1e-8, mask_erosion: int = 1, max_points: int | None = None) -> Tensor:
    """Förstner keypoints of ``image (*S)`` (2D or 3D) inside ``mask (*S)`` (None: everywhere).

    A voxel is a keypoint where its distinctiveness (:func:`foerstner_distinctiveness`, ``sigma``
    in voxels) is the maximum of the odd ``nms_window``-wide cube around it, exceeds ``threshold``
    and the voxel lies in ``mask`` eroded by ``mask_erosion`` voxels. With ``max_points`` only the
    most distinctive ones are kept. Returns ``(N, D)`` float32 voxel coordinates (stored axis
    order), sorted by voxel index.
    """
    if nms_window < 1 or nms_window % 2 == 0:
        raise ValueError(f"nms_window must be a positive odd number of voxels, got {nms_window}")
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from image shape {tuple(image.shape)}")
    distinctiveness = foerstner_distinctiveness(image, sigma)
    pooled = _POOL[image.dim()](distinctiveness[None, None], nms_window, stride=1, padding=nms_window // 2)[0, 0]
    keep = (distinctiveness == pooled) & (distinctiveness > threshold)
    if mask is not None:
        keep &= erode(mask, mask_erosion)
    indices = keep.nonzero()
    if max_points is not None and len(indices) > max_points:
        strongest = distinctiveness[keep].topk(max_points).indices.sort().values
        indices = indices[strongest]
    return indices.float()
