"""Training losses shared by the methods. MONAI's implementations are used where they exist.

Shapes: images ``(B, C, *S)``, displacements ``(B, D, *S)`` in voxels, probabilities ``(B, K, *S)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, LocalNormalizedCrossCorrelationLoss
from torch import Tensor


def diffusion(disp: Tensor) -> Tensor:
    """Diffusion regulariser as in VoxelMorph and the papers: the mean over axes of the mean squared
    forward difference (voxels²). MONAI's ``DiffusionLoss`` uses central differences instead, which
    ignores checkerboard patterns, so it is not used here."""
    diffs = forward_differences(disp)
    return sum(d.pow(2).mean() for d in diffs) / len(diffs)


def forward_differences(x: Tensor) -> list[Tensor]:
    """Forward differences of ``x (B, C, *S)`` along each spatial axis (each cropped by one voxel)."""
    return [torch.diff(x, dim=axis) for axis in range(2, x.dim())]


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared intensity difference."""
    return F.mse_loss(a, b)


def local_ncc(a: Tensor, b: Tensor, kernel_size: int = 9) -> Tensor:
    """Negative local normalised cross-correlation (MONAI, rectangular window of ``kernel_size``)."""
    dims = a.dim() - 2
    return LocalNormalizedCrossCorrelationLoss(spatial_dims=dims, kernel_size=kernel_size)(a, b)


def soft_dice(probs: Tensor, target_onehot: Tensor, include_background: bool = False) -> Tensor:
    """Soft multi-class Dice loss (1 − mean Dice) between probabilities and a one-hot target."""
    return DiceLoss(include_background=include_background, reduction="mean")(probs, target_onehot)


def symmetric_kl(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """JRSS's uncertainty loss (Shi et al., 2023, Eq. 5) between class probabilities ``p, q (B, K, *S)``:
    ``(1/K) Σ_c (KL(p^c‖q^c) + KL(q^c‖p^c))`` with ``KL(a‖b) = a·log(a/b)``, i.e. the mean over classes
    of ``(p − q)(log p − log q)``; the paper's sum over voxels is taken as a mean over voxels and images
    (like the cross-entropy it is added to). Zero when ``p == q``; probabilities are clamped at ``eps``."""
    p = p.clamp_min(eps)
    q = q.clamp_min(eps)
    return ((p - q) * (p.log() - q.log())).mean()


def end_point_error(pred: Tensor, target: Tensor, spacing: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
                    crop: int = 0) -> Tensor:
    """Mean Euclidean distance between two displacement fields in mm (``spacing`` mm per voxel,
    one entry per axis), ignoring ``crop`` voxels at every border."""
    dims = pred.dim() - 2
    if crop > 0:
        window = (slice(None), slice(None)) + (slice(crop, -crop),) * dims
        pred, target = pred[window], target[window]
    scale = torch.as_tensor(spacing, dtype=pred.dtype, device=pred.device).view(1, dims, *([1] * dims))
    return ((pred - target) * scale).pow(2).sum(1).add(1e-12).sqrt().mean()
