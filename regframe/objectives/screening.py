"""Pseudo-label screening for self-training: keep only the voxels a teacher is confident about.

JRSS (Shi et al., 2023, Sec. 3.3 step 2) sets "a class-level threshold τ in a similar way to FixMatch"
and keeps "only predictions with max(P_i^c) > τ"; FixMatch keeps a prediction when its largest class
probability exceeds τ. For a segmentation a prediction is a voxel, so a voxel keeps its arg-max pseudo
label only if the teacher's largest class probability there exceeds τ; the other voxels carry no target.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def screen_pseudo_labels(probs: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Hard one-hot pseudo labels from teacher probabilities ``probs (B, K, *S)``.

    Returns ``(onehot (B, K, *S) float, valid (B, 1, *S) float)``: ``valid`` is 1 where
    ``max_c P^c(x) > tau`` and 0 elsewhere; screened voxels have an all-zero one-hot vector, which the
    cross-entropy of :mod:`regframe.objectives.segmentation` and the registration Dice of
    :mod:`regframe.objectives.label_supervised_registration` ignore.
    """
    confidence, label = probs.max(dim=1, keepdim=True)
    valid = (confidence > tau).to(probs.dtype)
    onehot = F.one_hot(label[:, 0], probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    return onehot * valid, valid
