"""A segmenter made of any image-to-image network (default: the hybrid OBELISK U-Net)."""

from __future__ import annotations

from torch import Tensor, nn

from regframe.features.unet import ObeliskUNet
from regframe.segmenters.base import Segmenter


class NetworkSegmenter(Segmenter):
    """``logits = network(image)``; ``network`` maps ``(B, 1, *S)`` to ``(B, num_classes, *S)``.

    Without ``network`` a hybrid OBELISK U-Net is built with ``spatial_dims`` and ``dropout``.
    Any other network (e.g. ``monai.networks.nets.UNet``) can be given in YAML via ``class_path``.
    """

    def __init__(self, num_classes: int = 2, network: nn.Module | None = None, spatial_dims: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.network = network if network is not None else ObeliskUNet(1, num_classes, spatial_dims, dropout)

    def forward(self, image: Tensor) -> Tensor:
        return self.network(image)
