"""Pseudo-label screening for self-training: keep only the classes a teacher is confident about."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def screen_pseudo_labels(probs: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Hard one-hot pseudo labels from teacher probabilities ``probs (B, K, *S)``.

    Class ``c`` of an image is kept only if ``max_x P^c(x) > tau``. Returns ``(onehot (B, K, *S) float,
    kept (B, K) bool)``; voxels whose arg-max class was dropped have an all-zero one-hot vector, which
    the losses of :mod:`regframe.objectives.segmentation` ignore.
    """
    num_classes = probs.shape[1]
    kept = probs.flatten(2).amax(dim=2) > tau
    onehot = F.one_hot(probs.argmax(dim=1), num_classes).movedim(-1, 1).to(probs.dtype)
    return onehot * kept.view(*kept.shape, *([1] * (probs.dim() - 2))).to(probs.dtype), kept
