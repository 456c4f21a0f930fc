"""CST's inference pipeline around a network, built from the generic wrappers in Python."""

from __future__ import annotations

from torch import nn

from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.refine import Refined
from regframe.estimators.two_step import TwoStep
from regframe.optim.instance import InstanceOptimisation


def cst_io() -> InstanceOptimisation:
    """CST's Adam instance optimisation: 50 iterations (lr 1, data weight 12, diffusion 0.65) on the
    network's IO features, standardised per channel over the pair and multiplied by 5 (the reference
    code's factor on BatchNorm-scaled features), then one k5 box filter of the field. The
    standardisation makes the data/smoothness balance independent of the network's activation scale
    (a random He-initialised stage-0 network's features are about 10x smaller than a trained one's);
    chosen on 7 training pairs (``benchmarks/cst_results.md``: same Dice, half the folding)."""
    return InstanceOptimisation(iterations=50, lr=1.0, data_weight=12.0, smooth_weight=0.65,
                                feature_normalisation="channel", feature_scale=5.0,
                                final_smoothing=1, final_smoothing_kernel=5)


def cst_pipeline(network: nn.Module | None = None, warps: int = 2, ice_iterations: int = 15,
                 io: InstanceOptimisation | None = None) -> Refined:
    """``Refined(TwoStep(InverseConsistent(network)), io)`` (``warps=1``: without ``TwoStep``;
    ``ice_iterations=0``: without ``InverseConsistent``). Defaults: CST's ``h∘g``
    (:class:`FeatureConvexEstimator`), 2 warps, ICE with 15 iterations, :func:`cst_io`. The same as the
    ``model.init_args.estimator`` of experiments/abdomen_cst.yaml."""
    if warps not in (1, 2):
        raise ValueError(f"warps must be 1 or 2, got {warps}")
    step = network if network is not None else FeatureConvexEstimator()
    if ice_iterations > 0:
        step = InverseConsistent(step, ice_iterations)
    return Refined(TwoStep(step) if warps == 2 else step, io if io is not None else cst_io())
