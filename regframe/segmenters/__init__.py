"""Segmentation networks: ``logits = segmenter(image)``."""

from regframe.segmenters.base import Segmenter
from regframe.segmenters.network import NetworkSegmenter

__all__ = ["NetworkSegmenter", "Segmenter"]
