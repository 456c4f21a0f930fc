"""benchmarks/cst_coarse_oracle.py and cst_label_fit.py: the ideal cost volume, ``h`` on it (``h∘g`` for a
perfect ``g``) and the distance from an intensity edge, against known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.optim.correlation import displacement_offsets


@pytest.fixture(scope="module")
def oracle(benchmark_script):
    return benchmark_script("cst_coarse_oracle")


@pytest.fixture(scope="module")
def label_fit(benchmark_script):
    return benchmark_script("cst_label_fit")


def test_ideal_cost_is_least_at_the_offset_nearest_to_each_cell(oracle):
    offsets = displacement_offsets(2, 2)
    cells = torch.tensor([[0.4, -1.6], [2.0, 0.0], [-0.2, 1.7]]).T.reshape(1, 2, 3, 1)  # three cells
    cost = oracle.ideal_cost(cells, offsets)
    assert cost.shape == (1, 25, 3, 1)
    nearest = offsets[cost[0, :, :, 0].argmin(0)]
    torch.testing.assert_close(nearest, torch.tensor([[0.0, -2.0], [2.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(cost[0, :, 0, 0].min(), torch.tensor(0.4 ** 2 + 0.4 ** 2))


def test_h_on_an_ideal_cost_returns_a_constant_reachable_field(oracle):
    """A constant whole offset (1, -1) per feature cell comes back as 8 x (1, -1) image voxels (stride 8), and a
    target beyond the reach is clipped to the radius."""
    network = FeatureConvexEstimator(feature_net=nn.Identity(), radius=2)
    cells = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 6)
    field = oracle.ideal_h(network, cells, (48, 48))
    torch.testing.assert_close(field[..., 16:32, 16:32], torch.tensor([8.0, -8.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16),
                               atol=1e-3, rtol=0)
    far = oracle.ideal_h(network, cells * 5, (48, 48))
    torch.testing.assert_close(far[..., 16:32, 16:32], torch.tensor([16.0, -16.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16),
                               atol=1e-3, rtol=0)


def test_edge_distance_counts_mm_from_the_nearest_intensity_step(label_fit):
    image = torch.zeros(1, 1, 16, 32)
    image[..., 16:] = 1.0                     # a step between columns 15 and 16: label grid (8, 16), columns 7 | 8
    distance = label_fit.edge_distance_mm(image, (8, 16), [4.0, 2.0])
    np.testing.assert_allclose(distance[3], [14, 12, 10, 8, 6, 4, 2, 0, 2, 4, 6, 8, 10, 12, 14, 16])
    assert np.isinf(label_fit.edge_distance_mm(torch.ones(1, 1, 8, 8), (4, 4), [1.0, 1.0])).all()
