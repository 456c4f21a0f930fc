"""Differentiable sparse loopy belief propagation over displacement candidates from the moving cloud.

As in Hansen & Heinrich (IPMI 2021): every fixed point ``i`` gets ``L`` candidate displacements
``d_ia = y_a − x_i`` to its ``L`` nearest moving points ``y_a`` (mm). The unary cost of a candidate
is the mean squared difference of the fixed point's and the moving point's features, relative to
its mean over the point's candidates. Pairwise costs on the kNN graph of the fixed points penalise
``smooth_weight · ‖d_ia − d_nb‖²`` (mm²). Messages are soft-min (``−T·logsumexp(−·/T)``,
temperature ``T`` in cost units; ``T → 0`` is min-sum), run in parallel for ``iterations`` rounds;
node ``i`` receives a message from each of its ``k`` graph neighbours ``n``, computed from ``n``'s
unary and incoming messages except the one ``n`` got from ``i`` (when ``i`` is among ``n``'s
neighbours). The output is the expected displacement under ``softmax(−belief / T)`` per fixed
point: ``(B, N, 3)`` mm, differentiable in every input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.features.graph_cnn import gather_neighbours, knn, knn_graph


def candidate_displacements(fixed_points: Tensor, moving_points: Tensor, num_candidates: int) -> tuple[Tensor, Tensor]:
    """Vectors ``(B, N, L, 3)`` mm from each fixed point ``(B, N, 3)`` to its ``L`` nearest moving
    points ``(B, M, 3)``, and those points' indices ``(B, N, L)`` into the moving cloud."""
    indices, _ = knn(fixed_points, moving_points, num_candidates)
    return gather_neighbours(moving_points, indices) - fixed_points.unsqueeze(2), indices


def feature_unary(fixed_features: Tensor, moving_features: Tensor, candidate_indices: Tensor) -> Tensor:
    """Unary costs ``(B, N, L)``: the mean squared difference between each fixed feature ``(B, N, C)`` and
    the moving features ``(B, M, C)`` of its candidates ``candidate_indices (B, N, L)``, divided by its
    mean over the ``L`` candidates (so costs are about 1 whatever the feature scale, e.g. of a network
    with random weights, and ``temperature`` and ``smooth_weight`` keep their meaning)."""
    candidates = gather_neighbours(moving_features, candidate_indices)
    squared = (candidates - fixed_features.unsqueeze(2)).square().mean(dim=-1)
    return squared / squared.mean(dim=-1, keepdim=True).clamp_min(1e-12)


def reverse_edges(graph: Tensor) -> Tensor:
    """For the edge ``i ← graph[i, j]``, the position of ``i`` among its neighbour's neighbours
    ``(B, N, k)``, or ``-1`` where ``i`` is not one of them."""
    neighbours_of_neighbours = gather_neighbours(graph, graph)  # (B, N, k, k)
    own = torch.arange(graph.shape[1], device=graph.device).view(1, -1, 1, 1)
    hit = neighbours_of_neighbours == own
    return torch.where(hit.any(dim=-1), hit.to(torch.uint8).argmax(dim=-1), torch.full_like(graph, -1))


def squared_distances(first: Tensor, second: Tensor) -> Tensor:
    """``‖a − b‖²`` for every row ``a`` of ``first (..., P, D)`` and ``b`` of ``second (..., Q, D)``:
    ``(..., P, Q)`` (batch axes broadcast), computed as ``|a|² + |b|² − 2a·b`` without a ``(P, Q, D)`` tensor."""
    products = first @ second.transpose(-1, -2)
    return (first.square().sum(-1, keepdim=True) + second.square().sum(-1).unsqueeze(-2) - 2 * products).clamp_min(0)


def sparse_belief_propagation(unary: Tensor, candidates: Tensor, graph: Tensor, smooth_weight: float,
                              temperature: float, iterations: int) -> Tensor:
    """Expected displacement ``(B, N, 3)`` (mm) after loopy belief propagation.

    ``unary (B, N, L)``: cost of each candidate; ``candidates (B, N, L, 3)`` mm; ``graph (B, N, k)``:
    neighbours of each fixed point; ``smooth_weight``: cost per mm² of displacement difference;
    ``iterations = 0`` gives the soft arg-min of the unaries alone. Computed in the log domain
    (scores = −cost / T), so a message is one ``logsumexp``.
    """
    if temperature <= 0 or iterations < 0 or smooth_weight < 0:
        raise RegframeInputError(f"sparse LBP: need temperature > 0, iterations >= 0, smooth_weight >= 0; got "
                                 f"temperature={temperature}, iterations={iterations}, smooth_weight={smooth_weight}")
    scores = -unary / temperature
    if iterations and smooth_weight:
        neighbour_candidates = gather_neighbours(candidates.flatten(2), graph).unflatten(-1, candidates.shape[2:])
        # pairwise[b, i, j, a, c] = −w·‖d_ia − d_nc‖² / T, n = graph[b, i, j]: (B, N, k, L, L)
        pairwise = squared_distances(candidates.unsqueeze(2), neighbour_candidates) * (-smooth_weight / temperature)
        reverse = reverse_edges(graph)
        has_reverse = (reverse >= 0).unsqueeze(-1)
        batch = torch.arange(graph.shape[0], device=graph.device).view(-1, 1, 1)
        messages = scores.new_zeros(*graph.shape, scores.shape[-1])  # messages[b, i, j]: to i from graph[b, i, j]
        for _ in range(iterations):
            belief = scores + messages.sum(dim=2)
            sender = gather_neighbours(belief, graph)  # (B, N, k, L)
            echo = messages[batch, graph, reverse.clamp_min(0)]  # to graph[b, i, j] from i: (B, N, k, L)
            sender = sender - torch.where(has_reverse, echo, torch.zeros_like(echo))
            messages = torch.logsumexp(sender.unsqueeze(3) + pairwise, dim=-1)
            messages = messages - messages.amax(dim=-1, keepdim=True)
        scores = scores + messages.sum(dim=2)
    weights = torch.softmax(scores, dim=-1)
    return (weights.unsqueeze(-1) * candidates).sum(dim=2)


class SparseLBP(nn.Module):
    """Sparse LBP as a module with its settings (see the module docstring).

    ``num_candidates``: moving points per fixed point (L); ``k``: neighbours in the fixed points'
    graph; ``smooth_weight``: cost per mm²; ``temperature``: soft-min temperature (cost units);
    ``iterations``: message-passing rounds.
    """

    def __init__(self, num_candidates: int = 32, k: int = 10, smooth_weight: float = 0.01,
                 temperature: float = 0.05, iterations: int = 5) -> None:
        super().__init__()
        if num_candidates < 1 or k < 1:
            raise RegframeInputError(f"SparseLBP: need num_candidates >= 1 and k >= 1; got {num_candidates}, {k}")
        self.num_candidates = num_candidates
        self.k = k
        self.smooth_weight = smooth_weight
        self.temperature = temperature
        self.iterations = iterations

    def forward(self, fixed_points: Tensor, moving_points: Tensor, fixed_features: Tensor,
                moving_features: Tensor) -> Tensor:
        """Displacements ``(B, N, 3)`` mm at ``fixed_points (B, N, 3)`` towards ``moving_points (B, M, 3)``
        (mm), given features ``(B, N, C)`` and ``(B, M, C)``."""
        candidates, indices = candidate_displacements(fixed_points, moving_points, self.num_candidates)
        unary = feature_unary(fixed_features, moving_features, indices)
        graph = knn_graph(fixed_points, self.k)
        return sparse_belief_propagation(unary, candidates, graph, self.smooth_weight, self.temperature,
                                         self.iterations)
