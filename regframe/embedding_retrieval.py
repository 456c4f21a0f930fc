"""Embedding quality without registration: cross-subject nearest-neighbour label retrieval.

Every voxel of subject A's feature grid takes the label of the voxel of subject B whose feature
vector is most similar (cosine); the Dice of the retrieved label map against A's own labels, per
label present in both, measures how well the features identify anatomy across subjects. A
constant (collapsed) embedding retrieves one label everywhere; a perfect one retrieves A's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def retrieved_labels(features_a: Tensor, features_b: Tensor, labels_b: Tensor, chunk: int = 1024) -> Tensor:
    """For each voxel of ``features_a (C, *S_a)`` the label of ``labels_b (*S_b)`` at the voxel of
    ``features_b (C, *S_b)`` with the highest cosine similarity; returns ``(*S_a)`` int64."""
    a = F.normalize(features_a.flatten(1).T.float(), dim=1)
    b = F.normalize(features_b.flatten(1).float(), dim=0)
    flat_labels = labels_b.flatten().long()
    out = torch.empty(a.shape[0], dtype=torch.long, device=a.device)
    for start in range(0, a.shape[0], chunk):
        out[start:start + chunk] = flat_labels[(a[start:start + chunk] @ b).argmax(dim=1)]
    return out.view(features_a.shape[1:])


def retrieval_dice(features_a: Tensor, features_b: Tensor, labels_a: Tensor, labels_b: Tensor,
                   labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice per label of the labels retrieved for A from B (:func:`retrieved_labels`) against
    ``labels_a``; labels (default: foreground labels present in both) with the feature grids' shapes."""
    retrieved = retrieved_labels(features_a, features_b, labels_b)
    if labels is None:
        present = set(labels_a.unique().tolist()) & set(labels_b.unique().tolist())
        labels = sorted(v for v in present if v != 0)
    scores = {}
    for label in labels:
        truth, found = labels_a == label, retrieved == label
        total = int(truth.sum() + found.sum())
        scores[int(label)] = 2.0 * int((truth & found).sum()) / total if total else float("nan")
    return scores
