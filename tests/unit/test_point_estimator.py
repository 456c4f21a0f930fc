"""Point-cloud estimator end to end and dense fields from sparse displacements (thin-plate spline)."""

from __future__ import annotations

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.points import IdentityPointEstimator, PointCloudEstimator
from regframe.features.graph_cnn import GraphFeatureNet
from regframe.optim.sparse_lbp import SparseLBP
from regframe.point_fields import dense_field
from regframe.points import sample_field

SHIFT = torch.tensor([4.0, -3.0, 2.5])  # mm
SHAPE = (30, 24, 20)
SPACING = (1.5, 2.0, 2.5)  # mm per voxel: the grid spans 43.5 × 46 × 47.5 mm


def shuffled_translation(num_points: int = 300, num_distractors: int = 30):
    """Fixed cloud (mm) and moving = fixed + SHIFT, rows shuffled, plus distractor points."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, num_points, 3, generator=generator) * 60
    order = torch.randperm(num_points, generator=generator)
    distractors = torch.rand(1, num_distractors, 3, generator=generator) * 60
    return fixed, torch.cat([(fixed + SHIFT)[:, order], distractors], dim=1)


def test_estimator_with_random_features_recovers_a_translation():
    fixed, moving = shuffled_translation()
    torch.manual_seed(0)
    optimiser = SparseLBP(num_candidates=16, k=6, smooth_weight=0.05, temperature=0.05, iterations=5)
    estimator = PointCloudEstimator(GraphFeatureNet(k=8), optimiser)
    with torch.no_grad():
        displacement = estimator(fixed, moving)
    assert displacement.shape == fixed.shape
    error = (displacement - SHIFT).norm(dim=-1)
    assert error.mean() < 0.05 and (error < 0.01).float().mean() > 0.95
    assert error.max() < 1.0  # distractors change the features of the nearby moving points a little


def test_centroid_alignment_brings_a_large_translation_into_the_candidate_range():
    fixed, _ = shuffled_translation(num_points=300, num_distractors=0)
    far = torch.tensor([25.0, -20.0, 15.0])  # mm: far beyond the 16 nearest moving points (~6 mm apart)
    moving = (fixed + far)[:, torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    torch.manual_seed(0)
    network = GraphFeatureNet(k=8)
    optimiser = SparseLBP(num_candidates=16, k=6, smooth_weight=0.05, temperature=0.05, iterations=5)
    with torch.no_grad():
        aligned = PointCloudEstimator(network, optimiser, align_centroids=True)(fixed, moving)
        plain = PointCloudEstimator(network, optimiser)(fixed, moving)
    assert (aligned - far).norm(dim=-1).median() < 0.01
    assert (plain - far).norm(dim=-1).median() > 5.0


def test_estimator_is_differentiable_in_the_feature_network():
    fixed, moving = shuffled_translation(num_points=60, num_distractors=0)
    torch.manual_seed(0)
    estimator = PointCloudEstimator(GraphFeatureNet(k=4, channels=(8,), out_channels=4),
                                    SparseLBP(num_candidates=8, k=4, iterations=2))
    (estimator(fixed, moving) - SHIFT).square().mean().backward()
    gradients = [p.grad for p in estimator.feature_net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sum(g.abs().sum() for g in gradients) > 0


def test_identity_estimator_and_bad_clouds():
    fixed, moving = shuffled_translation(num_points=20, num_distractors=0)
    assert torch.equal(IdentityPointEstimator()(fixed, moving), torch.zeros_like(fixed))
    with pytest.raises(RegframeInputError, match="moving_points"):
        PointCloudEstimator()(fixed, moving[0])
    with pytest.raises(RegframeInputError, match="batch sizes"):
        PointCloudEstimator()(fixed, moving.expand(2, -1, -1))


def random_points_in_grid(count: int) -> torch.Tensor:
    """``(1, count, 3)`` mm positions inside the grid."""
    extent = (torch.tensor(SHAPE) - 1) * torch.tensor(SPACING)
    return torch.rand(1, count, 3, generator=torch.Generator().manual_seed(4)) * extent


def test_constant_displacement_gives_a_constant_field_in_voxels():
    points = random_points_in_grid(40)
    field = dense_field(points, torch.tensor([3.0, -2.0, 1.0]).expand_as(points), SHAPE, SPACING)
    expected = torch.tensor([3.0 / 1.5, -2.0 / 2.0, 1.0 / 2.5]).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
    assert field.shape == (1, 3, *SHAPE)
    assert torch.allclose(field, expected, atol=1e-5)


def smooth_displacement(points: torch.Tensor) -> torch.Tensor:
    """A smooth displacement (mm) of mm positions ``(..., 3)``: amplitude 3 mm, wavelength about 60 mm."""
    x, y, z = points.unbind(-1)
    return torch.stack([3 * torch.sin(x / 10), 2 * torch.cos(y / 12) * torch.sin(z / 15), 0.05 * x + 0.02 * z], -1)


@pytest.mark.parametrize(("grid_stride", "tolerance"), [(1, 0.05), (3, 0.2)])
def test_dense_field_reproduces_the_sparse_displacements_at_the_points(grid_stride, tolerance):
    points = random_points_in_grid(150)
    displacements = smooth_displacement(points)
    field = dense_field(points, displacements, SHAPE, SPACING, grid_stride=grid_stride)
    spacing = torch.tensor(SPACING)
    at_points = sample_field(field[0], points[0] / spacing) * spacing  # voxels -> mm
    error = (at_points - displacements[0]).norm(dim=-1)
    assert error.max() < tolerance and error.mean() < tolerance / 2  # mm, for displacements of up to about 4 mm
    nodes = torch.stack(torch.meshgrid(*[torch.arange(0, n, 2.0) for n in SHAPE], indexing="ij"), -1).view(-1, 3)
    between = field[0, :, ::2, ::2, ::2].reshape(3, -1).T * spacing
    assert (between - smooth_displacement(nodes * spacing)).norm(dim=-1).median() < 0.1  # follows the function


def test_smooth_weight_trades_fidelity_for_smoothness():
    points = random_points_in_grid(80)
    noisy = smooth_displacement(points) + torch.randn(points.shape, generator=torch.Generator().manual_seed(5))

    def roughness(smooth_weight: float) -> float:
        field = dense_field(points, noisy, SHAPE, SPACING, smooth_weight=smooth_weight, grid_stride=2)
        return sum(field.diff(dim=axis).square().mean().item() for axis in (2, 3, 4))

    exact, smoother, smoothest = roughness(0.0), roughness(1e3), roughness(1e5)
    assert exact > 2 * smoother > 4 * smoothest


def test_dense_field_rejects_mismatched_input():
    points = random_points_in_grid(10)
    with pytest.raises(RegframeInputError, match="dense_field"):
        dense_field(points, points[:, :5], SHAPE, SPACING)
    with pytest.raises(RegframeInputError, match="spacing"):
        dense_field(points, points, SHAPE, (1.0, 0.0, 1.0))
