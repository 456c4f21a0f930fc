"""Reuse a feature extractor's output for an image it has already seen: ``ReuseFeatures(extractor)``.

Two registration passes over the same pair (:class:`regframe.estimators.two_step.TwoStep`) extract
the fixed image's features twice; sharing one ``ReuseFeatures`` between the passes computes them once.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn


class ReuseFeatures(nn.Module):
    """``extractor(image)``, remembered for as long as ``image`` lives and is not modified in place.

    A call with the same tensor object (same in-place version counter) returns the stored output
    instead of running ``extractor`` again; an entry is dropped when its image is garbage collected,
    so the stored features never outlive the images they describe. Only outputs computed without
    autograd (inside ``no_grad``, or not requiring grad) are stored: a graph is never shared between
    calls. ``(B, 1, *S) -> whatever extractor returns``.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self._outputs: dict[int, tuple[weakref.ref, int, Tensor]] = {}

    def forward(self, image: Tensor) -> Tensor:
        key = id(image)
        entry = self._outputs.get(key)
        if entry is not None and entry[0]() is image and entry[1] == image._version:
            return entry[2]
        output = self.extractor(image)
        if not (torch.is_grad_enabled() and output.requires_grad):
            self._outputs[key] = (weakref.ref(image, lambda _, key=key: self._outputs.pop(key, None)),
                                  image._version, output)
        return output
