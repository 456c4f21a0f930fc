"""Graph CNN on point clouds: kNN graph known answers, equivariance to point order, translation invariance."""

from __future__ import annotations

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.features.graph_cnn import (
    GraphFeatureNet,
    gather_neighbours,
    knn,
    knn_graph,
)


def test_knn_graph_on_a_line_excludes_the_point_itself():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [7, 0, 0]]])
    assert knn_graph(points, 1).tolist() == [[[1], [0], [1], [2]]]
    assert knn_graph(points, 2).tolist() == [[[1, 2], [0, 2], [1, 0], [2, 1]]]


def test_knn_between_clouds_returns_squared_distances_nearest_first():
    query = torch.tensor([[[0.0, 0, 0]]])
    reference = torch.tensor([[[0.0, 0, 5], [2, 0, 0], [0, 1, 0]]])
    indices, distances = knn(query, reference, 2)
    assert indices.tolist() == [[[2, 1]]]
    assert distances.tolist() == [[[1.0, 4.0]]]
    with pytest.raises(RegframeInputError, match="k=4"):
        knn(query, reference, 4)


def test_gather_neighbours_picks_rows_per_cloud():
    values = torch.arange(12.0).view(2, 3, 2)
    graph = torch.tensor([[[2], [0], [1]], [[1], [2], [0]]])
    assert gather_neighbours(values, graph)[:, :, 0].tolist() == [[[4, 5], [0, 1], [2, 3]],
                                                                   [[8, 9], [10, 11], [6, 7]]]


@pytest.fixture()
def cloud() -> torch.Tensor:
    return torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([80.0, 60.0, 70.0])


def test_permuting_the_points_permutes_the_features(cloud):
    torch.manual_seed(0)
    net = GraphFeatureNet(k=8, channels=(16, 16), out_channels=8)
    features = net(cloud)
    permutation = torch.randperm(cloud.shape[1], generator=torch.Generator().manual_seed(1))
    assert features.shape == (2, 200, 8)
    assert torch.allclose(net(cloud[:, permutation]), features[:, permutation], atol=1e-5)
    assert features.std(dim=1).min() > 1e-3  # features differ between points: the check is not vacuous


def test_features_are_invariant_to_translating_the_cloud(cloud):
    torch.manual_seed(0)
    net = GraphFeatureNet(k=8, channels=(16, 16), out_channels=8)
    shift = torch.tensor([25.0, -40.0, 13.0])
    assert torch.allclose(net(cloud + shift), net(cloud), atol=1e-4)


def test_features_depend_on_the_local_geometry(cloud):
    """Scaling the cloud changes the neighbour offsets, so the features change."""
    torch.manual_seed(0)
    net = GraphFeatureNet(k=8, channels=(16, 16), out_channels=8)
    assert (net(cloud * 1.5) - net(cloud)).abs().max() > 1e-2


def test_bad_shapes_and_settings_raise():
    with pytest.raises(RegframeInputError, match=r"\(B, N, 3\)"):
        GraphFeatureNet()(torch.zeros(10, 3))
    with pytest.raises(RegframeInputError, match="length_scale"):
        GraphFeatureNet(length_scale=0.0)
