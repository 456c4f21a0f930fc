"""Pixel-wise contrastive (InfoNCE) loss for self-supervised anatomical embeddings.

Two crops of one scan overlap; a voxel ``p`` of crop A shows the same physical point as voxel
``p + shift`` of crop B. For sampled anchors in A the positive is the embedding of the same point
in B; negatives are the embeddings of B most similar to the anchor (hard negatives) among those
farther than ``exclusion_radius`` grid voxels from the positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_infonce(emb_a: Tensor, emb_b: Tensor, shift: Sequence[int], num_points: int = 64,
                  num_negatives: int = 64, exclusion_radius: float = 2.0, temperature: float = 0.5,
                  generator: torch.Generator | None = None) -> Tensor:
    """InfoNCE over corresponding points of two embedding maps of overlapping crops.

    Args:
        emb_a, emb_b: ``(C, *S_a)`` and ``(C, *S_b)`` unit-length embeddings (2D or 3D grids).
        shift: integer offset (grid voxels) with ``emb_a[:, p] ~ emb_b[:, p + shift]``.
        num_points: anchors sampled in the overlap.
        num_negatives: hardest negatives kept per anchor.
        exclusion_radius: voxels of B within this distance (grid voxels) of the positive are no negatives.
        temperature: softmax temperature (SAM uses 0.5).
    Returns the mean loss (scalar); zero (with graph) if the crops do not overlap.
    """
    dims = emb_a.dim() - 1
    shape_a, shape_b = emb_a.shape[1:], emb_b.shape[1:]
    shift_t = torch.tensor(list(shift), device=emb_a.device)
    low = torch.clamp(-shift_t, min=0)
    high = torch.minimum(torch.tensor(shape_a, device=emb_a.device),
                         torch.tensor(shape_b, device=emb_a.device) - shift_t)
    if bool((high <= low).any()):
        return emb_a.sum() * 0.0
    rand = torch.rand(num_points, dims, generator=generator).to(emb_a.device)
    points_a = (low + rand * (high - low).float()).long().clamp(max=high - 1)
    points_b = points_a + shift_t
    flat_a = emb_a.flatten(1)
    flat_b = emb_b.flatten(1)
    index_a = _ravel(points_a, shape_a)
    index_b = _ravel(points_b, shape_b)
    anchors = flat_a[:, index_a].T                         # (N, C)
    positives = flat_b[:, index_b].T                       # (N, C)
    similarity = anchors @ flat_b                          # (N, M)
    coords_b = torch.stack(torch.meshgrid(*[torch.arange(n, device=emb_a.device) for n in shape_b],
                                          indexing="ij"), dim=-1).reshape(-1, dims)
    distance = torch.cdist(points_b.float(), coords_b.float())
    similarity = similarity.masked_fill(distance <= exclusion_radius, float("-inf"))
    k = min(num_negatives, similarity.shape[1])
    negatives = similarity.topk(k, dim=1).values            # hardest negatives (N, k)
    positive = (anchors * positives).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def _ravel(points: Tensor, shape: Sequence[int]) -> Tensor:
    """Flat indices of integer ``points (N, D)`` in a C-ordered grid of ``shape``."""
    index = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for axis, n in enumerate(shape):
        index = index * n + points[:, axis]
    return index
