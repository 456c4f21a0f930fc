"""CST feature CNN, h∘g estimator and refinement: shapes, strides, gradients, settings."""

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.refine import RefinedEstimator
from regframe.features.cnn import CSTFeatureNet
from regframe.methods.cyclical import CyclicalSelfTraining


def small_net():
    return CSTFeatureNet(channels=(4, 8, 8, 8, 8, 8), out_channels=4, io_channels=4)


def test_cnn_strides_and_io_features():
    net = small_net()
    feats = net.features(torch.rand(2, 1, 16, 24, 32))
    assert feats.coarse.shape == (2, 4, 2, 3, 4) and feats.fine.shape == (2, 4, 8, 12, 16)
    default = CSTFeatureNet()
    assert default.early[1][0].out_channels == 64 and default.head.out_channels == 16
    weight = CSTFeatureNet(init="kaiming").late[1][0].weight  # He initialisation: std sqrt(2 / fan_in)
    assert abs(weight.std().item() / (2 / (128 * 27)) ** 0.5 - 1) < 0.05


def test_estimator_output_grid_and_gradients():
    estimator = FeatureConvexEstimator(small_net(), radius=1)
    fixed, moving = torch.rand(1, 1, 16, 16, 24), torch.rand(1, 1, 16, 16, 24)
    disp = estimator(fixed, moving)
    assert disp.shape == (1, 3, 16, 16, 24)
    assert estimator(fixed, moving, output_size=(8, 8, 12)).shape == (1, 3, 8, 8, 12)
    disp.pow(2).mean().backward()
    grads = [p.grad for p in estimator.feature_net.late.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_refinement_settings_share_weights_and_adam_changes_field():
    torch.manual_seed(0)
    refined = RefinedEstimator(FeatureConvexEstimator(small_net(), radius=1), warps=2, adam_iterations=3).eval()
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    result = refined.refine(fixed, moving, output_size=(8, 8, 8))
    assert result.after_adam.shape == (1, 3, 8, 8, 8)
    assert (result.after_adam - result.before_adam).abs().max() > 0
    one_warp = refined.with_settings(warps=1, adam_iterations=0, inverse_consistency=False)
    assert one_warp.base is refined.base
    plain = one_warp(fixed, moving)
    torch.testing.assert_close(plain, refined.base(fixed, moving))


def test_stage0_network_is_he_initialised_and_moves():
    """The stage-0 copy is freshly random (He init by default) and, unlike a PyTorch-default random
    network in eval mode, whose features shrink to nothing, it predicts a non-zero field."""
    torch.manual_seed(0)
    images = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    sizes = {}
    for init in ("default", "kaiming"):
        module = CyclicalSelfTraining(RefinedEstimator(FeatureConvexEstimator(small_net(), radius=1),
                                                       adam_iterations=0), stage0_init=init)
        random = module.random_stage0_estimator().eval()
        conv = random.base.feature_net.late[1][0].weight
        assert not torch.equal(conv, module.estimator.base.feature_net.late[1][0].weight)
        if init == "kaiming":
            assert abs(conv.std().item() / (2 / (8 * 27)) ** 0.5 - 1) < 0.2
        sizes[init] = random(*images).abs().mean().item()
    assert sizes["kaiming"] > 20 * sizes["default"]
    with pytest.raises(RegframeInputError, match="stage0_init"):
        CyclicalSelfTraining(stage0_init="xavier")
