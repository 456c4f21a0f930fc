"""Training-free estimators by name, for ``regframe register --method NAME``.

Each entry maps a name to a zero-argument factory returning a ready ``DisplacementEstimator``.
Add a method by adding one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator, IdentityEstimator


def _affine() -> DisplacementEstimator:
    from regframe.estimators.affine import IterativeAffineEstimator

    return IterativeAffineEstimator()


def _convex_adam() -> DisplacementEstimator:
    from regframe.estimators.convex_adam import convex_adam

    return convex_adam()


def pyramid_mind(**pyramid_options: int) -> DisplacementEstimator:
    """The MIND pyramid (:func:`regframe.estimators.pyramid.mind_pyramid`, options passed on) refined
    by 20 Adam iterations on the 2-voxel grid; the registry's ``pyramid_mind``."""
    from regframe.estimators.pyramid import mind_pyramid
    from regframe.estimators.refine import Refined
    from regframe.optim.instance import InstanceOptimisation

    # Adam settings chosen on 7 training pairs of AbdomenCTCT_synth (benchmarks/training_free_results.md)
    return Refined(mind_pyramid(**pyramid_options), InstanceOptimisation(grid_spacing=2, iterations=20, smooth_weight=1.25,
                                                        foreground_threshold=0.05, foreground_margin=2,
                                                        final_smoothing=1, final_smoothing_kernel=3))


def _pyramid_mind_fast() -> DisplacementEstimator:
    from regframe.estimators.pyramid import mind_pyramid

    return mind_pyramid()


TRAINING_FREE: dict[str, Callable[[], DisplacementEstimator]] = {
    "identity": IdentityEstimator,
    "affine": _affine,
    "convex_adam": _convex_adam,
    "pyramid_mind": pyramid_mind,
    "pyramid_mind_fast": _pyramid_mind_fast,
}


def build_training_free(name: str) -> DisplacementEstimator:
    """Instantiate the training-free method ``name`` or raise a clear error listing the choices."""
    if name not in TRAINING_FREE:
        raise RegframeInputError(f"unknown method {name!r}; choose one of: {', '.join(sorted(TRAINING_FREE))}")
    return TRAINING_FREE[name]()
