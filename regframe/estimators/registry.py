"""Training-free estimators by name, for ``regframe register --method NAME``.

Each entry maps a name to a factory returning a ready ``DisplacementEstimator``; the integer options
a factory takes are listed in :data:`METHOD_OPTIONS` and given as ``NAME:KEY=VALUE[,KEY=VALUE]``
(``pyramid_mind:min_level_cells=17``). Add a method by adding one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator, IdentityEstimator

if TYPE_CHECKING:
    from regframe.optim.instance import InstanceOptimisation


def _affine() -> DisplacementEstimator:
    from regframe.estimators.affine import IterativeAffineEstimator

    return IterativeAffineEstimator()


def _convex_adam() -> DisplacementEstimator:
    from regframe.estimators.convex_adam import convex_adam

    return convex_adam()


def mind_adam(iterations: int, features: nn.Module | None = None, who: str = "pyramid_mind") -> InstanceOptimisation:
    """``pyramid_mind``'s Adam stage: ``iterations`` Adam iterations on the 2-voxel grid of ``features``
    (``None``: the wrapped estimator's own IO features); ``who`` names the caller in the error."""
    from regframe.optim.instance import InstanceOptimisation

    if iterations < 0:
        raise RegframeInputError(f"{who}: adam_iterations must be >= 0, got {iterations}")
    # chosen on 7 training pairs of AbdomenCTCT_synth (benchmarks/training_free_results.md)
    return InstanceOptimisation(features=features, grid_spacing=2, iterations=iterations, smooth_weight=1.25,
                                foreground_threshold=0.05, foreground_margin=2, final_smoothing=1,
                                final_smoothing_kernel=3)


def mind_refined(estimator: nn.Module, adam_iterations: int) -> DisplacementEstimator:
    """``estimator``'s field (e.g. a trained network's) refined by ``pyramid_mind``'s Adam stage on
    MIND-SSC (radius 1, dilation 2) of the fixed and the moving image: ``regframe register --adam N``."""
    from regframe.estimators.refine import Refined
    from regframe.features.mind import MINDSSC

    return Refined(estimator, mind_adam(adam_iterations, MINDSSC(radius=1, dilation=2), who="--adam"))


def pyramid_mind(adam_iterations: int = 20, **pyramid_options: Any) -> DisplacementEstimator:
    """The MIND pyramid (:func:`regframe.estimators.pyramid.mind_pyramid`, options passed on) refined
    by ``adam_iterations`` Adam iterations on the 2-voxel grid; the registry's ``pyramid_mind``."""
    from regframe.estimators.pyramid import mind_pyramid
    from regframe.estimators.refine import Refined

    return Refined(mind_pyramid(**pyramid_options), mind_adam(adam_iterations))


def _pyramid_mind_fast(**pyramid_options: int) -> DisplacementEstimator:
    from regframe.estimators.pyramid import mind_pyramid

    return mind_pyramid(**pyramid_options)


def _pyramid_mind_two_pass(first_levels: int = 3, second_levels: int = 3, adam_iterations: int = 20,
                           **pyramid_options: int) -> DisplacementEstimator:
    """The MIND pyramid's coarsest ``first_levels`` levels, then on the warped moving image its finest
    ``second_levels`` levels and ``adam_iterations`` of Adam (``pyramid_mind``); the fixed image's
    MIND is extracted once."""
    from regframe.estimators.pyramid import MIND_LEVELS, mind_pyramid
    from regframe.estimators.two_step import TwoStep
    from regframe.features.mind import MINDSSC
    from regframe.features.reuse import ReuseFeatures

    for option, value in (("first_levels", first_levels), ("second_levels", second_levels)):
        if not 1 <= value <= len(MIND_LEVELS):
            raise RegframeInputError(f"pyramid_mind_two_pass: {option} must be 1 to {len(MIND_LEVELS)}, got {value}")
    features = ReuseFeatures(MINDSSC(radius=1, dilation=2))
    # chosen on the abdomen training pairs (benchmarks/samconvex_results.md: +0.037 Dice over pyramid_mind)
    return TwoStep(mind_pyramid(levels=MIND_LEVELS[:first_levels], features=features, **pyramid_options),
                   pyramid_mind(adam_iterations, levels=MIND_LEVELS[-second_levels:], features=features,
                                **pyramid_options))


TRAINING_FREE: dict[str, Callable[[], DisplacementEstimator]] = {
    "identity": IdentityEstimator,
    "affine": _affine,
    "convex_adam": _convex_adam,
    "pyramid_mind": pyramid_mind,
    "pyramid_mind_fast": _pyramid_mind_fast,
    "pyramid_mind_two_pass": _pyramid_mind_two_pass,
}


# Integer options of the factories above (their own, and mind_pyramid's passed on).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "pyramid_mind": ("min_level_cells", "smooth_iters", "ice", "adam_iterations"),
    "pyramid_mind_fast": ("min_level_cells", "smooth_iters", "ice"),
    "pyramid_mind_two_pass": ("min_level_cells", "smooth_iters", "ice", "first_levels", "second_levels",
                              "adam_iterations"),
}


def parse_method(spec: str) -> tuple[str, dict[str, int]]:
    """``NAME`` or ``NAME:KEY=VALUE[,KEY=VALUE]`` -> (name, integer options), checked against
    :data:`TRAINING_FREE` and :data:`METHOD_OPTIONS`; a clear error names what is wrong."""
    name, _, option_text = spec.partition(":")
    if name not in TRAINING_FREE:
        raise RegframeInputError(f"unknown method {name!r}; choose one of: {', '.join(sorted(TRAINING_FREE))}")
    accepted = METHOD_OPTIONS.get(name, ())
    options: dict[str, int] = {}
    for item in filter(None, option_text.split(",")):
        key, equals, value = item.partition("=")
        if key not in accepted:
            raise RegframeInputError(f"method {name!r} has no option {key!r}; its options: {', '.join(accepted) or 'none'}")
        try:
            options[key] = int(value)
        except ValueError:
            raise RegframeInputError(f"method {spec!r}: option {key!r} needs an integer, got {value if equals else 'nothing'!r}") from None
    return name, options


def build_training_free(spec: str) -> DisplacementEstimator:
    """Instantiate the training-free method ``NAME`` or ``NAME:KEY=VALUE,...`` (:func:`parse_method`)."""
    name, options = parse_method(spec)
    return TRAINING_FREE[name](**options)
