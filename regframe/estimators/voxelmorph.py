"""The VoxelMorph U-Net (Balakrishnan et al., IEEE TMI 2019, "VoxelMorph-2"): encoder 16, 32, 32, 32
(each level one 3x3 convolution, max-pooled), decoder 32, 32, 32, 32, 32, 16, 16 (nearest-neighbour
upsampling, skip connections, LeakyReLU 0.2, no normalisation), as a backbone of
:class:`~regframe.estimators.unet_regressor.UNetRegressor`, whose near-zero 3x3 convolution is the
paper's flow layer. Built on MONAI's ``VoxelMorphUNet`` without its own output convolution.
"""

from __future__ import annotations

from monai.networks.nets import VoxelMorphUNet
from torch import Tensor, nn

#: MONAI's ``channels`` for VoxelMorph-2: the encoder (16, 32, 32, 32), then the decoder's first
#: four levels (32 each, the first at the bottleneck); ``UNET_OUT`` is the fifth decoder level.
CHANNELS = (16, 32, 32, 32, 32, 32, 32, 32)
UNET_OUT = 32
FINAL_CONVOLUTIONS = (16, 16)


class VoxelMorphBackbone(nn.Module):
    """``(B, in_channels, *S) -> (B, 16, *S)`` for ``*S`` divisible by 16 (four poolings).

    Args:
        spatial_dims: 2 or 3.
        in_channels: 2 for ``concat(moving, fixed)``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2) -> None:
        super().__init__()
        unet = VoxelMorphUNet(spatial_dims, in_channels, UNET_OUT, channels=CHANNELS,
                              final_conv_channels=FINAL_CONVOLUTIONS)
        del unet.net[1].final_conv_out  # the flow layer is the regressor's head
        self.unet = unet

    def forward(self, x: Tensor) -> Tensor:
        return self.unet(x)
