"""Sparse loopy belief propagation: candidate sets, graph bookkeeping, known translations, smoothing, gradients."""

from __future__ import annotations

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.features.graph_cnn import knn_graph
from regframe.optim.sparse_lbp import (
    SparseLBP,
    candidate_displacements,
    feature_unary,
    reverse_edges,
    sparse_belief_propagation,
    squared_distances,
)

SHIFT = torch.tensor([4.0, -3.0, 2.5])  # mm


def test_candidates_are_vectors_to_the_nearest_moving_points():
    fixed = torch.tensor([[[0.0, 0, 0], [10, 0, 0]]])
    moving = torch.tensor([[[1.0, 0, 0], [10, 2, 0], [0, 0, -3]]])
    candidates, indices = candidate_displacements(fixed, moving, 2)
    assert indices.tolist() == [[[0, 2], [1, 0]]]
    assert candidates.tolist() == [[[[1, 0, 0], [0, 0, -3]], [[0, 2, 0], [-9, 0, 0]]]]


def test_feature_unary_is_the_mean_squared_feature_difference_relative_to_its_mean():
    fixed_features = torch.tensor([[[1.0, 0]]])
    moving_features = torch.tensor([[[1.0, 0], [0, 2], [3, 0]]])  # mean squared differences 0, 2.5, 2
    unary = feature_unary(fixed_features, moving_features, torch.tensor([[[0, 1, 2]]]))
    assert torch.allclose(unary, torch.tensor([[[0.0, 2.5, 2.0]]]) / 1.5)
    assert torch.allclose(feature_unary(fixed_features * 100, moving_features * 100, torch.tensor([[[0, 1, 2]]])),
                          unary)


def test_reverse_edges_find_the_receiver_among_the_senders_neighbours():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]])
    graph = knn_graph(points, 1)  # [[1], [0], [1], [2]]
    assert reverse_edges(graph).tolist() == [[[0], [0], [-1], [-1]]]


def test_squared_distances_match_the_direct_formula():
    a, b = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    direct = (a[:, :, None] - b[:, None]).square().sum(-1)
    assert torch.allclose(squared_distances(a, b), direct, atol=1e-5)


def translated_cloud_with_distractors(num_points: int = 300, num_distractors: int = 200):
    """Fixed cloud, moving = fixed + SHIFT plus distractors (rows shuffled), and one-hot identity features:
    ``(fixed, moving, fixed_features, moving_features)``."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, num_points, 3, generator=generator) * 60
    distractors = torch.rand(1, num_distractors, 3, generator=generator) * 60
    order = torch.randperm(num_points + num_distractors, generator=generator)
    moving = torch.cat([fixed + SHIFT, distractors], dim=1)[:, order]
    ids = torch.eye(num_points + num_distractors)
    fixed_features = ids[None, :num_points]
    moving_features = torch.cat([ids[:num_points], torch.zeros(num_distractors, ids.shape[1])])[None, order]
    return fixed, moving, fixed_features, moving_features


@pytest.mark.parametrize("iterations", [0, 5])
def test_identity_features_recover_a_translation_at_every_point(iterations):
    fixed, moving, fixed_features, moving_features = translated_cloud_with_distractors()
    lbp = SparseLBP(num_candidates=16, k=6, smooth_weight=0.01, temperature=0.05, iterations=iterations)
    displacement = lbp(fixed, moving, fixed_features, moving_features)
    assert displacement.shape == fixed.shape
    assert (displacement - SHIFT).norm(dim=-1).max() < 1e-3


def noisy_problem():
    """Translation with identity unaries, except that at 20 % of the fixed points one wrong candidate
    is made the cheapest (cost −1): ``(unary, candidates, graph, outliers)``."""
    fixed, moving, fixed_features, moving_features = translated_cloud_with_distractors()
    candidates, indices = candidate_displacements(fixed, moving, 16)
    unary = feature_unary(fixed_features, moving_features, indices)
    generator = torch.Generator().manual_seed(2)
    outliers = torch.rand(fixed.shape[1], generator=generator) < 0.2
    for point in outliers.nonzero().flatten().tolist():
        wrong = (candidates[0, point] - SHIFT).norm(dim=-1) > 2
        unary[0, point, wrong.nonzero()[0, 0]] = -1.0
    return unary, candidates, knn_graph(fixed, 6), outliers


def test_pairwise_term_pulls_outliers_to_their_neighbours_displacement():
    unary, candidates, graph, outliers = noisy_problem()

    def mean_error(smooth_weight: float, iterations: int) -> float:
        displacement = sparse_belief_propagation(unary, candidates, graph, smooth_weight, 0.05, iterations)
        return (displacement - SHIFT).norm(dim=-1).mean().item()

    unregularised = mean_error(0.01, 0)
    assert outliers.sum() > 30 and unregularised > 1.0  # the outliers are off by several mm
    assert mean_error(0.0, 5) == pytest.approx(unregularised)  # no pairwise term: nothing changes
    by_weight = [mean_error(weight, 5) for weight in (0.002, 0.01, 0.05)]
    assert unregularised > by_weight[0] > by_weight[1] > by_weight[2]  # a larger weight smooths more
    by_iterations = [mean_error(0.01, iterations) for iterations in (1, 2, 5)]
    assert unregularised > by_iterations[0] > by_iterations[1] > by_iterations[2]  # so do more iterations
    assert by_weight[2] < 0.01 * unregularised  # the outliers take their neighbours' displacement


def test_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(3)
    unary = torch.rand(1, 6, 3, dtype=torch.float64, generator=generator).requires_grad_()
    candidates = torch.randn(1, 6, 3, 3, dtype=torch.float64, generator=generator).requires_grad_()
    graph = knn_graph(torch.randn(1, 6, 3, generator=generator), 2)
    assert torch.autograd.gradcheck(lambda u, c: sparse_belief_propagation(u, c, graph, 0.5, 0.3, 3),
                                    (unary, candidates))


def test_bad_settings_raise():
    unary, candidates = torch.zeros(1, 4, 2), torch.zeros(1, 4, 2, 3)
    graph = torch.zeros(1, 4, 1, dtype=torch.long)
    with pytest.raises(RegframeInputError, match="temperature"):
        sparse_belief_propagation(unary, candidates, graph, 0.1, 0.0, 1)
    with pytest.raises(RegframeInputError, match="num_candidates"):
        SparseLBP(num_candidates=0)
