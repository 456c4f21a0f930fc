"""The segmentation counterpart of ``DisplacementEstimator``: ``logits = segmenter(image)``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Segmenter(nn.Module, ABC):
    """Maps an image ``(B, 1, *S)`` to class logits ``(B, K, *S)`` (class 0 = background)."""

    num_classes: int

    @abstractmethod
    def forward(self, image: Tensor) -> Tensor:
        """Return unnormalised class scores ``(B, K, *S)`` at the input resolution."""
