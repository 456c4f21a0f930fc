"""An estimator that expects preprocessed intensities, used on raw images."""

from __future__ import annotations

from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.preprocess import Preprocessing


class IntensityMapped(DisplacementEstimator):
    """``estimator(map(F), map(M))`` with ``map`` the intensity map of ``preprocessing``
    (``(clip(x, *clamp) + shift) * scale``; resolution is left to the estimator). Lets a method whose
    features were trained on mapped intensities (a pre-trained embedding) sit in a
    :class:`~regframe.estimators.two_step.TwoStep` whose other step reads raw images.
    Field ``(B, D, *S)`` in voxels of the input grid, as the wrapped estimator returns it."""

    def __init__(self, estimator: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.estimator = estimator
        self.preprocessing = preprocessing

    @property
    def wrapped(self) -> nn.Module:
        return self.estimator

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return self.estimator(self.preprocessing.intensity(fixed), self.preprocessing.intensity(moving))
