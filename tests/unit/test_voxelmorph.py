"""The VoxelMorph-2 backbone has the paper's layers (encoder 16-32-32-32, decoder 32-32-32-32-32-16-16)
and, inside UNetRegressor, starts near the identity in 2D and 3D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regframe.estimators.unet_regressor import UNetRegressor
from regframe.estimators.voxelmorph import VoxelMorphBackbone


def test_layers_are_voxelmorph_2():
    convs = [m for m in VoxelMorphBackbone(2).modules() if isinstance(m, nn.Conv2d)]
    outputs = [c.out_channels for c in convs]
    assert outputs[:4] == [16, 32, 32, 32]  # encoder, one convolution per level
    assert outputs[4:] == [32, 32, 32, 32, 32, 16, 16]  # bottleneck + decoder + full-resolution convolutions
    assert [c.in_channels for c in convs[5:8]] == [64, 64, 64] and convs[8].in_channels == 32 + 16  # skips
    assert sum(isinstance(m, nn.MaxPool2d) for m in VoxelMorphBackbone(2).modules()) == 4
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in VoxelMorphBackbone(2).modules())


@pytest.mark.parametrize("dims,shape", [(2, (30, 34)), (3, (16, 18, 17))])
def test_regressor_with_voxelmorph_backbone_starts_near_identity(dims, shape):
    estimator = UNetRegressor(dims, backbone=VoxelMorphBackbone(dims), backbone_channels=16)
    disp = estimator(torch.rand(2, 1, *shape), torch.rand(2, 1, *shape))
    assert disp.shape == (2, dims, *shape) and disp.abs().max() < 1e-3
