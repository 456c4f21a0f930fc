"""VoxelMorph-style regressor with the hybrid OBELISK U-Net as backbone (JRSS registration network)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.features.obelisk import conv_nd
from regframe.features.unet import ObeliskUNet


class ObeliskRegressor(DisplacementEstimator):
    """``u = head(backbone(cat(moving, fixed)))`` in voxels, ``(B, D, *S)``.

    ``backbone`` maps ``(B, 2, *S)`` to ``(B, backbone_channels, *S)``; default: hybrid OBELISK U-Net
    with ``backbone_channels`` outputs. Any other network (e.g. ``monai.networks.nets.UNet`` with
    ``in_channels: 2``) can be given in YAML via ``class_path``. The flow head is a 3×3(×3) convolution
    initialised from ``N(0, 1e-5)`` so the first fields are ≈ 0. ``dropout`` only applies to the default backbone.
    """

    def __init__(self, backbone: nn.Module | None = None, spatial_dims: int = 3, backbone_channels: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else ObeliskUNet(2, backbone_channels, spatial_dims,
                                                                          dropout)
        self.flow = conv_nd(spatial_dims)(backbone_channels, spatial_dims, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return self.flow(self.backbone(torch.cat([moving, fixed], dim=1)))
