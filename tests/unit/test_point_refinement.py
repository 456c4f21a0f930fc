"""Refinement of point displacements (CST's label stream for clouds): passes add up, the smoothing
spline keeps smooth fields and pulls outliers towards their neighbours, training sees the network."""

from __future__ import annotations

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.point_refinement import RefinedPoints, smooth_displacements
from regframe.estimators.points import PointDisplacementEstimator
from regframe.estimators.protocols import trained_network

TARGET = torch.tensor([6.0, -2.0, 4.0])  # mm


class HalfWay(PointDisplacementEstimator):
    """Moves every fixed point half of the way from where it is to ``x0 + TARGET`` (its first call's
    points ``x0``), so each pass halves the remaining error."""

    def __init__(self) -> None:
        super().__init__()
        self.origin: torch.Tensor | None = None

    def forward(self, fixed_points, moving_points):
        if self.origin is None:
            self.origin = fixed_points.clone()
        return (self.origin + TARGET - fixed_points) / 2


def cloud(count: int = 120) -> torch.Tensor:
    return torch.rand(1, count, 3, generator=torch.Generator().manual_seed(0)) * 80


def test_passes_add_up_from_the_displaced_cloud():
    points = cloud()
    for passes, remaining in ((1, 0.5), (2, 0.25), (3, 0.125)):
        result = RefinedPoints(HalfWay(), passes=passes)(points, points)
        assert torch.allclose(result, TARGET * (1 - remaining), atol=1e-5)


def test_smoothing_keeps_an_affine_field_and_pulls_an_outlier_in():
    points = cloud()
    affine = 0.05 * points + torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(smooth_displacements(points, affine, 1e5), affine, atol=1e-4)  # r³ spline keeps affine
    noisy = affine.clone()
    noisy[0, 7] += torch.tensor([20.0, 0.0, 0.0])
    smoothed = smooth_displacements(points, noisy, 1e5)
    assert (smoothed[0, 7] - affine[0, 7]).norm() < 0.5 * 20.0
    assert torch.allclose(smooth_displacements(points, noisy, 0.0), noisy, atol=1e-4)  # λ = 0 interpolates


def test_training_uses_the_wrapped_network_and_bad_options_raise():
    inner = HalfWay()
    assert trained_network(RefinedPoints(inner, passes=2, smooth_weight=10.0)) is inner
    with pytest.raises(RegframeInputError, match="passes"):
        RefinedPoints(inner, passes=0)
    with pytest.raises(RegframeInputError, match="smooth_weight"):
        RefinedPoints(inner, smooth_weight=-1.0)
