"""Any dense feature network as CST's two-headed feature extractor (correlation + IO features)."""

from __future__ import annotations

from torch import Tensor, nn

from regframe.optim.smoothing import pool

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class PooledFeatureHeads(nn.Module):
    """Gives a network ``(B, 1, *S) -> (B, channels, *S)`` (e.g. a MONAI ``BasicUNet``) the two
    outputs :class:`~regframe.estimators.feature_convex.FeatureConvexEstimator` uses:

    - ``forward``: correlation features ``(B, out_channels, *S/stride)``: the network's output
      average-pooled by ``stride`` (CST: 8), then a 1x1(x1) convolution ``head``;
    - ``io_features``: instance-optimisation features ``(B, io_channels, *S/io_stride)``: the output
      pooled by ``io_stride`` (CST: 2), then a 1x1(x1) convolution ``io_head``.

    Both heads see the same network output; only ``head`` is trained (IO is not differentiable).
    """

    def __init__(self, network: nn.Module, channels: int, out_channels: int = 16, io_channels: int = 16,
                 stride: int = 8, io_stride: int = 2, spatial_dims: int = 3) -> None:
        super().__init__()
        self.network = network
        self.head = _CONV[spatial_dims](channels, out_channels, 1)
        self.io_head = _CONV[spatial_dims](channels, io_channels, 1)
        self.stride = stride
        self.io_stride = io_stride
        self.out_channels = out_channels

    def forward(self, image: Tensor) -> Tensor:
        """Correlation features ``(B, out_channels, *S/stride)``."""
        return self.head(pool(self.network(image), self.stride))

    def io_features(self, image: Tensor) -> Tensor:
        """IO features ``(B, io_channels, *S/io_stride)``."""
        return self.io_head(pool(self.network(image), self.io_stride))
