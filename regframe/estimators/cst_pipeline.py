"""CST's inference pipeline around a network, built from the generic wrappers in Python."""

from __future__ import annotations

from torch import nn

from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.refine import Refined
from regframe.estimators.two_step import TwoStep
from regframe.optim.instance import InstanceOptimisation


def cst_pipeline(network: nn.Module | None = None, warps: int = 2, ice_iterations: int = 15,
                 io: InstanceOptimisation | None = None) -> Refined:
    """``Refined(TwoStep(InverseConsistent(network)), io)`` (``warps=1``: without ``TwoStep``;
    ``ice_iterations=0``: without ``InverseConsistent``). Defaults: CST's ``h∘g``
    (:class:`FeatureConvexEstimator`), 2 warps, ICE with 15 iterations, 50 Adam IO iterations on the
    network's IO features. The same as the ``model.init_args.estimator`` of experiments/abdomen_cst.yaml."""
    if warps not in (1, 2):
        raise ValueError(f"warps must be 1 or 2, got {warps}")
    step = network if network is not None else FeatureConvexEstimator()
    if ice_iterations > 0:
        step = InverseConsistent(step, ice_iterations)
    return Refined(TwoStep(step) if warps == 2 else step, io if io is not None else InstanceOptimisation())
