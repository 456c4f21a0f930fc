"""OBELISK layer and hybrid OBELISK U-Net: shapes (2D, 3D), sampling, initialisations."""

import pytest
import torch

from regframe.estimators.obelisk_regressor import ObeliskRegressor
from regframe.features.obelisk import ObeliskLayer
from regframe.features.unet import ObeliskUNet
from regframe.segmenters import NetworkSegmenter


@pytest.mark.parametrize("dims,shape", [(2, (13, 10)), (3, (9, 12, 10))])
def test_obelisk_layer_output_shape(dims, shape):
    layer = ObeliskLayer(in_channels=3, num_offsets=8, out_channels=5, spatial_dims=dims)
    out = layer(torch.randn(2, 3, *shape), output_size=[s // 4 + 1 for s in shape])
    assert out.shape == (2, 5, *[s // 4 + 1 for s in shape])


def test_obelisk_offsets_are_small_and_trainable():
    torch.manual_seed(0)
    layer = ObeliskLayer(1, 512, 4, spatial_dims=3)
    assert layer.offsets.shape == (512, 3)
    assert 0.04 < layer.offsets.std().item() < 0.06
    layer(torch.randn(1, 1, 8, 8, 8), (2, 2, 2)).sum().backward()
    assert layer.offsets.grad is not None and layer.offsets.grad.abs().sum() > 0


def test_sampling_positions_follow_grid_and_offsets():
    """align_corners=False: a grid of half size samples between voxel pairs (ramp → pair means); an
    offset of 2/W in normalised units shifts the samples by one voxel along the last axis."""
    layer = ObeliskLayer(1, 2, 1, spatial_dims=2, groups=1, align_corners=False)
    with torch.no_grad():
        layer.offsets.copy_(torch.tensor([[0.0, 0.0], [2.0 / 8, 0.0]]))   # (x, y) = (last axis, first axis)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8)
    samples = layer.sample(ramp, (2, 4))
    assert samples.shape == (1, 2, 2, 4)
    assert torch.allclose(samples[0, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert torch.allclose(samples[0, 1, 0], torch.tensor([1.5, 3.5, 5.5, 7.0]))  # last one clamps at border


@pytest.mark.parametrize("dims,shape", [(2, (18, 17)), (3, (9, 8, 10))])
def test_unet_segmentation_and_registration_shapes(dims, shape):
    seg = NetworkSegmenter(num_classes=3, spatial_dims=dims, dropout=0.5)
    assert seg(torch.randn(2, 1, *shape)).shape == (2, 3, *shape)
    reg = ObeliskRegressor(spatial_dims=dims)
    disp = reg(torch.randn(2, 1, *shape), torch.randn(2, 1, *shape))
    assert disp.shape == (2, dims, *shape)
    assert disp.abs().max() < 1e-2  # flow head N(0, 1e-5): initial field ≈ 0


def test_unet_weight_count_and_dropout_layers():
    net = ObeliskUNet(1, 2, 3, dropout=0.5)
    count = sum(p.numel() for p in net.parameters())
    assert 2e5 < count < 4e5
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


def test_monai_unet_backbone_is_accepted():
    from monai.networks.nets import UNet

    backbone = UNet(spatial_dims=3, in_channels=2, out_channels=8, channels=(8, 16), strides=(2,))
    reg = ObeliskRegressor(backbone=backbone, spatial_dims=3, backbone_channels=8)
    assert reg(torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
