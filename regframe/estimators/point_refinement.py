"""Refinement of point displacements after the optimiser (CST's pseudo-label stream for clouds).

The CST paper improves pseudo labels with non-differentiable steps after the optimiser ("a second
warp", regularisation, fine-tuning) and applies the same steps at test time. For keypoint clouds:

- a second pass: the fixed cloud displaced by the first estimate is registered again to the moving
  cloud, and the two displacements add up (``x + u₁ + u₂`` is the new position of ``x``); the
  candidate set of the second pass is centred on the first estimate, so it is searched more densely
  around the likely target;
- regularisation: the displacements are replaced by a smoothing cubic spline through them
  (:func:`regframe.point_fields.fit_spline` with ``smooth_weight`` mm³), which pulls outliers towards
  their neighbours.

Training losses use the innermost network (:func:`regframe.estimators.protocols.trained_network`),
so the refinement shapes the labels and the test-time output, never the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.estimators.points import PointDisplacementEstimator
from regframe.point_fields import evaluate_spline, fit_spline


def smooth_displacements(points: Tensor, displacements: Tensor, smooth_weight: float) -> Tensor:
    """The smoothing spline through ``displacements (B, N, 3)`` mm at ``points (B, N, 3)`` mm, evaluated
    at the points (``smooth_weight`` = 0 returns the input up to round-off)."""
    smoothed = []
    for p, d in zip(points.double(), displacements.double()):
        weights, affine = fit_spline(p, d, smooth_weight)
        smoothed.append(evaluate_spline(p, weights, affine, p))
    return torch.stack(smoothed).to(displacements.dtype)


class RefinedPoints(PointDisplacementEstimator):
    """``estimator`` followed by ``passes − 1`` further passes from the displaced fixed cloud and a
    smoothing spline (``smooth_weight`` mm³, 0: none) after every pass. No gradient flows through it."""

    def __init__(self, estimator: PointDisplacementEstimator, passes: int = 2, smooth_weight: float = 0.0) -> None:
        super().__init__()
        if passes < 1 or smooth_weight < 0:
            raise RegframeInputError(f"RefinedPoints: need passes >= 1 and smooth_weight >= 0; got passes={passes}, "
                                     f"smooth_weight={smooth_weight}")
        self.estimator = estimator
        self.passes = passes
        self.smooth_weight = smooth_weight

    @property
    def wrapped(self) -> nn.Module:
        return self.estimator

    @torch.no_grad()
    def forward(self, fixed_points: Tensor, moving_points: Tensor) -> Tensor:
        """``fixed_points (B, N, 3)``, ``moving_points (B, M, 3)`` mm -> displacements ``(B, N, 3)`` mm."""
        displacements = torch.zeros_like(fixed_points)
        for _ in range(self.passes):
            displacements = displacements + self.estimator(fixed_points + displacements, moving_points)
            if self.smooth_weight:
                displacements = smooth_displacements(fixed_points, displacements, self.smooth_weight)
        return displacements
