"""TransMorph-like displacement regressor: a Swin-Transformer encoder with a convolutional decoder
(MONAI ``SwinUNETR``) as the backbone of :class:`UNetRegressor`.

The defaults are a CPU-small configuration (feature size 12, one Swin block per stage, window 4);
the original TransMorph is far larger. Inputs are padded to a multiple of 32 (five halvings); the
decoder uses group norm (3 groups) because instance norm fails on the 1-voxel bottleneck of small inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import SwinUNETR

from regframe.estimators.unet_regressor import UNetRegressor


class TransMorph(UNetRegressor):
    """``UNetRegressor`` whose backbone is a Swin-UNETR over ``concat(moving, fixed)``.

    Args:
        spatial_dims: 2 or 3.
        feature_size: Swin embedding width (a multiple of 12); also the decoder's output channels.
        depths: Swin blocks per stage (four stages).
        num_heads: attention heads per stage.
        window_size: attention window (voxels of the patch grid).
        integration_steps: scaling-and-squaring steps (0 = plain displacement).
    """

    def __init__(self, spatial_dims: int = 3, feature_size: int = 12, depths: Sequence[int] = (1, 1, 1, 1),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 4,
                 integration_steps: int = 0) -> None:
        backbone = SwinUNETR(in_channels=2, out_channels=feature_size, feature_size=feature_size,
                             depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
                             spatial_dims=spatial_dims, norm_name=("group", {"num_groups": 3}))
        super().__init__(spatial_dims=spatial_dims, backbone=backbone, backbone_channels=feature_size,
                         integration_steps=integration_steps, size_divisible=32)
