"""Target registration errors of sparse point displacements (mm), for validating point methods.

Displacements ``u`` (mm) are given at the fixed points; ``x + u(x)`` is where a fixed point ``x`` lies
in the moving scan. Landmarks get their displacement from the cubic polyharmonic spline through the
sparse displacements (:func:`regframe.point_fields.fit_spline`), the same interpolation that makes
the dense field.
"""

from __future__ import annotations

from torch import Tensor

from regframe.point_fields import evaluate_spline, fit_spline


def interpolate_displacements(points: Tensor, displacements: Tensor, at: Tensor, smooth_weight: float = 0.0) -> Tensor:
    """Displacements ``(P, 3)`` mm at ``at (P, 3)`` mm, interpolated from ``displacements (N, 3)`` mm at
    ``points (N, 3)`` mm by the cubic spline (``smooth_weight``: its regularisation, mm³); float64."""
    weights, affine = fit_spline(points.double(), displacements.double(), smooth_weight)
    return evaluate_spline(points.double(), weights, affine, at.double())


def landmark_tre(fixed_points: Tensor, displacements: Tensor, fixed_landmarks: Tensor, moving_landmarks: Tensor,
                 smooth_weight: float = 0.0) -> Tensor:
    """Per-landmark TRE ``(L,)`` mm of one pair: ``‖l_f + u(l_f) − l_m‖`` with ``u`` interpolated at the
    fixed landmarks ``(L, 3)`` from ``displacements (N, 3)`` at ``fixed_points (N, 3)`` (all mm)."""
    at_landmarks = interpolate_displacements(fixed_points, displacements, fixed_landmarks, smooth_weight)
    return (fixed_landmarks.double() + at_landmarks - moving_landmarks.double()).norm(dim=-1)


def keypoint_tre(fixed_points: Tensor, displacements: Tensor, fixed_points_in_moving: Tensor) -> Tensor:
    """Per-point TRE ``(..., N)`` mm at the fixed points: ``‖x + u(x) − y‖`` with ``y`` the true moving
    position of ``x`` (all ``(..., N, 3)`` mm)."""
    return (fixed_points + displacements - fixed_points_in_moving).norm(dim=-1)
