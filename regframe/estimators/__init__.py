"""Displacement estimators: everything that maps ``(fixed, moving)`` to a displacement field."""

from regframe.estimators.base import DisplacementEstimator

__all__ = ["DisplacementEstimator"]
