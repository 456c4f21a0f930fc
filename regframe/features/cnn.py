"""CST feature extractor ``g``: a plain 3D (or 2D) CNN with stride 8 and a stride-2 side output."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def he_initialise(conv: nn.Module) -> None:
    """He (Kaiming) normal initialisation of a convolution's weight (fan-in, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class CSTFeatureNet(nn.Module):
    """Six 3x3x3 convolutions, each followed by BatchNorm and ReLU, stride 2 in the first, third and
    fifth (total stride 8), then a 1x1x1 convolution to ``out_channels`` (Bigalke et al. 2023).

    The output of the second block (``channels[1]`` channels, stride 2) is mapped by a separate
    1x1x1 convolution to ``io_channels`` for instance optimisation. That head receives no gradient
    (IO is not differentiable), so it stays a fixed random projection, as in the paper.
    Input ``(B, in_channels, *S)`` with ``S`` divisible by 8 for exact strides.

    ``init="default"`` keeps PyTorch's initialisation (as the reference code does); ``"kaiming"``
    He-initialises the convolutions (fan-in, ReLU gain). A *trained* network is insensitive to this
    (BatchNorm normalises in training). For an untrained network in eval mode it decides everything:
    with the default init the features shrink layer by layer and the correlation sees nothing
    (AbdomenCTCT_synth, half resolution, 15 pairs, 2 warps + ICE: Dice 0.2342 vs identity 0.2333;
    He init: 0.3078). CST's random stage-0 network is therefore He-initialised
    by default (``CyclicalSelfTraining(stage0_init="kaiming")``), whatever this argument says.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128, 128, 128, 128),
                 out_channels: int = 16, io_channels: int = 16, spatial_dims: int = 3, init: str = "default") -> None:
        super().__init__()
        if init not in ("default", "kaiming"):
            raise ValueError(f"init must be 'default' or 'kaiming', got {init!r}")
        self.init = init
        if len(channels) != 6:
            raise ValueError(f"channels must list the widths of the six convolutions, got {list(channels)}")
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        blocks = []
        previous = in_channels
        for index, width in enumerate(channels):
            stride = 2 if index % 2 == 0 else 1
            blocks.append(nn.Sequential(conv(previous, width, 3, stride=stride, padding=1, bias=False),
                                        norm(width), nn.ReLU(inplace=True)))
            previous = width
        self.early = nn.Sequential(*blocks[:2])
        self.late = nn.Sequential(*blocks[2:])
        self.head = conv(previous, out_channels, 1)
        self.io_head = conv(channels[1], io_channels, 1)
        self.out_channels = out_channels
        self.stride = 8
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """With ``init="kaiming"``: He-initialise every convolution (zero biases) and reset BatchNorm."""
        if self.init != "kaiming":
            return
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                he_initialise(module)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                module.reset_parameters()

    def forward(self, image: Tensor) -> Tensor:
        """Correlation features ``(B, out_channels, *S/8)``."""
        return self.head(self.late(self.early(image)))

    def io_features(self, image: Tensor) -> Tensor:
        """Stride-2 instance-optimisation features ``(B, io_channels, *S/2)`` (first two blocks only)."""
        return self.io_head(self.early(image))
