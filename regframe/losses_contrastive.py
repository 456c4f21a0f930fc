"""InfoNCE with sampled negatives for self-supervised anatomical embeddings (SAM, Yan et al. 2022).

Each anchor has one positive (the embedding of the same physical point in another view) and a set
of candidates: every embedding vector of both views, and of another scan. Candidates closer than an
ignore radius to the anchor's physical point are never negatives (``valid`` is False there). Of the
valid candidates, ``num_hard`` are drawn at random from the ``hard_pool`` most similar ones (ranked
by ``ranking``, SAM: local + global similarity) and ``num_random`` uniformly; during a warm-up
``num_hard = 0`` gives random negatives only. Drawing hard negatives from a pool instead of taking
the hardest avoids the state in which a constant embedding is the lowest loss (all negatives are the
same tissue as the anchor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_negatives(valid: Tensor, ranking: Tensor | None, num_hard: int, hard_pool: int, num_random: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """Indices ``(N, num_hard + num_random)`` of negatives per anchor among its valid candidates.

    Args:
        valid: ``(N, M)`` bool, the candidates that may be negatives of each anchor (each row needs one).
        ranking: ``(N, M)`` similarity ranking the hard pool (required when ``num_hard > 0``).
        num_hard: drawn without replacement from the ``hard_pool`` best-ranked valid candidates.
        num_random: drawn uniformly (with replacement) from all valid candidates.
    """
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every anchor needs at least one valid candidate")
    chosen = []
    if num_hard > 0:
        pool = min(hard_pool, valid.shape[1])
        scores = ranking.detach().masked_fill(~valid, float("-inf"))
        best = scores.topk(pool, dim=1)
        # a random subset of the pool: rank the pool's entries by random keys, invalid ones last
        keys = torch.rand(best.indices.shape, generator=generator).to(valid.device)
        keys = keys.masked_fill(torch.isinf(best.values), 2.0)
        order = keys.argsort(dim=1)[:, :num_hard]
        picked = best.indices.gather(1, order)
        picked_valid = valid.gather(1, picked)
        # rows with fewer valid pool entries than num_hard: fill with the row's best candidate
        chosen.append(torch.where(picked_valid, picked, best.indices[:, :1]))
    if num_random > 0:
        weights = valid.float() if generator is None else valid.float().cpu()  # the generator is a CPU one
        chosen.append(torch.multinomial(weights, num_random, replacement=True, generator=generator).to(valid.device))
    return torch.cat(chosen, dim=1)


def sampled_infonce(anchors: Tensor, positives: Tensor, candidates: Tensor, negatives: Tensor,
                    temperature: float = 0.5) -> tuple[Tensor, Tensor]:
    """InfoNCE of unit-length ``anchors (N, C)`` against ``positives (N, C)`` and the negatives
    ``candidates[negatives] ((M, C), indices (N, K))``.

    Returns the mean loss ``-log(e^{a·p/t} / (e^{a·p/t} + sum_k e^{a·n_k/t}))`` and the mean
    similarity gap ``a·p - mean_k a·n_k`` (detached; near 0 when the embedding collapses).
    """
    positive = (anchors * positives).sum(dim=1, keepdim=True)                # (N, 1)
    negative = torch.einsum("nc,nkc->nk", anchors, candidates[negatives])     # (N, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
    gap = (positive.squeeze(1) - negative.mean(dim=1)).mean().detach()
    return loss, gap
