"""What wrappers (refinement, two steps, inverse consistency) ask of the estimators they wrap.

An estimator *declares* a capability by implementing the members of a Protocol below; wrappers
forward to the innermost estimator that has it. Helpers find the trained network inside a chain
of wrappers and call any estimator at a requested output grid.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.spatial import resize_field


@runtime_checkable
class EstimatorWrapper(Protocol):
    """An estimator built around another one (``wrapped``), adding a non-learned step."""

    @property
    def wrapped(self) -> nn.Module:
        """The estimator inside (for a two-step wrapper: the first step)."""


@runtime_checkable
class IOFeatureSource(Protocol):
    """An estimator that supplies features for instance optimisation."""

    def io_features(self, image: Tensor) -> Tensor:
        """Features ``(B, C, *G)`` of ``image (B, 1, *S)`` for Adam IO."""


@runtime_checkable
class FeatureSharingEstimator(Protocol):
    """An estimator that returns its field together with the features it computed (e.g. the MIND
    pyramid), so that instance optimisation on the same features need not extract them again."""

    def field_and_features(self, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Field ``(B, D, *G)`` in voxels of its own grid ``G``, and the features ``(B, C, *G')`` of
        ``fixed`` and ``moving`` that its ``io_features`` would return."""


@runtime_checkable
class CoarseGridEstimator(Protocol):
    """An estimator that solves on a coarse grid of its own and upsamples (e.g. CST's ``h∘g``)."""

    def coarse_fields(self, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor]:
        """Forward (aligns moving to fixed) and backward (aligns fixed to moving) fields ``(B, D, *G)``
        on the coarse grid, in its voxels, from one feature extraction per image."""

    def upsample(self, field: Tensor, size: Sequence[int]) -> Tensor:
        """A coarse field brought to grid ``size`` (voxels of that grid), as ``forward`` does."""


@runtime_checkable
class AuxiliaryLossSource(Protocol):
    """An estimator with a training loss of its own besides the method's (e.g. DiffuseMorph's
    noise-prediction loss); methods that support it add it to the estimator's loss."""

    def auxiliary_loss(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """A scalar loss for the pair ``fixed``, ``moving`` ``(B, 1, *S)``, already weighted."""


def auxiliary_loss(estimator: nn.Module, fixed: Tensor, moving: Tensor) -> Tensor | None:
    """The trained network's :class:`AuxiliaryLossSource` loss, or None when it has none."""
    network = trained_network(estimator)
    return network.auxiliary_loss(fixed, moving) if isinstance(network, AuxiliaryLossSource) else None


def unwrapped(estimator: nn.Module) -> list[nn.Module]:
    """The chain ``[estimator, estimator.wrapped, ...]`` down to the innermost estimator."""
    chain = [estimator]
    while isinstance(chain[-1], EstimatorWrapper):
        chain.append(chain[-1].wrapped)
    return chain


def trained_network(estimator: nn.Module) -> nn.Module:
    """The innermost estimator: the differentiable network a method trains."""
    return unwrapped(estimator)[-1]


def io_feature_source(estimator: nn.Module) -> IOFeatureSource:
    """The outermost module of the chain that supplies IO features, or a clear error."""
    for module in unwrapped(estimator):
        if isinstance(module, IOFeatureSource):
            return module
    names = " -> ".join(type(m).__name__ for m in unwrapped(estimator))
    raise RegframeInputError(f"InstanceOptimisation.features is unset and no estimator in {names} has io_features; "
                             "give InstanceOptimisation a features module (e.g. MIND-SSC)")


def accepts_output_size(estimator: nn.Module) -> bool:
    """Whether ``estimator.forward`` takes an ``output_size`` argument."""
    return "output_size" in inspect.signature(estimator.forward).parameters


def field_at(estimator: nn.Module, fixed: Tensor, moving: Tensor, output_size: Sequence[int]) -> Tensor:
    """``estimator(fixed, moving)`` on grid ``output_size`` ``(B, D, *output_size)`` in its voxels:
    passed to estimators that accept ``output_size``, resampled (:func:`resize_field`) otherwise."""
    if accepts_output_size(estimator):
        return estimator(fixed, moving, output_size=tuple(output_size))
    return resize_field(estimator(fixed, moving), output_size)
