"""CST feature CNN, h∘g estimator and the generic wrappers: shapes, strides, gradients, and the
wrapped pipeline against a frozen copy of the original CST refinement algorithm."""

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.protocols import field_at, trained_network
from regframe.estimators.refine import Refined
from regframe.estimators.two_step import TwoStep
from regframe.features.cnn import CSTFeatureNet
from regframe.methods.cyclical import CyclicalSelfTraining
from regframe.optim.adam import adam_instance_optimisation
from regframe.optim.consistency import inverse_consistent
from regframe.optim.instance import InstanceOptimisation
from regframe.optim.upsample import upsample_field
from regframe.spatial import compose, resize_field, warp


def small_net():
    return CSTFeatureNet(channels=(4, 8, 8, 8, 8, 8), out_channels=4, io_channels=4)


def frozen_cst_refinement(base, fixed, moving, output_size, warps, ice, ice_iterations=15, adam_iterations=50):
    """The original ``RefinedEstimator.refine`` (before the wrappers), copied and frozen."""
    net = base.feature_net
    size = tuple(fixed.shape[2:])
    fixed_early = net.early(fixed)
    fixed_coarse, fixed_fine = net.head(net.late(fixed_early)), net.io_head(fixed_early)

    def one_pass(moving_image):
        moving_feat = net(moving_image)
        field = base.coarse_from_features(fixed_coarse, moving_feat)
        if ice:
            field = inverse_consistent(field, base.coarse_from_features(moving_feat, fixed_coarse), ice_iterations)
        return upsample_field(field, size)

    field = one_pass(moving)
    if warps == 2:
        field = compose(field, one_pass(warp(moving, field)))
    before = resize_field(field.float(), output_size)
    if adam_iterations <= 0:
        return before, before
    moving_fine = net.io_head(net.early(moving))
    after = adam_instance_optimisation(field.float(), fixed_fine.float(), moving_fine.float(),
                                       iterations=adam_iterations, lr=1.0, data_weight=12.0, smooth_weight=0.65,
                                       smooth_pools=3)
    return before, resize_field(after, output_size)


def wrapped(base, warps, ice, adam_iterations):
    """The new composition: Refined(TwoStep(InverseConsistent(base))) with the parts switched on or off."""
    return cst_pipeline(base, warps, 15 if ice else 0, InstanceOptimisation(iterations=adam_iterations))


def test_cnn_strides_and_io_features():
    net = small_net()
    image = torch.rand(2, 1, 16, 24, 32)
    assert net(image).shape == (2, 4, 2, 3, 4) and net.io_features(image).shape == (2, 4, 8, 12, 16)
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


@pytest.mark.parametrize("warps", [1, 2])
@pytest.mark.parametrize("ice", [True, False])
@pytest.mark.parametrize("adam_iterations", [0, 5])
def test_wrapped_pipeline_matches_the_frozen_cst_refinement(warps, ice, adam_iterations):
    torch.manual_seed(0)
    base = FeatureConvexEstimator(CSTFeatureNet(channels=(4, 8, 8, 8, 8, 8), out_channels=4, io_channels=4,
                                                init="kaiming"), radius=1).eval()
    noise = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 32, 32, 40), 5, stride=1, padding=2)
    fixed = (noise - noise.mean()) / noise.std()
    moving = torch.roll(fixed, (4, 0, -4), dims=(2, 3, 4))
    with torch.no_grad():
        expected = frozen_cst_refinement(base, fixed, moving, (16, 16, 20), warps, ice, adam_iterations=adam_iterations)
    result = wrapped(base, warps, ice, adam_iterations).refine(fixed, moving, output_size=(16, 16, 20))
    assert expected[1].abs().max() > 1.0  # a field that moves, so the comparison means something
    torch.testing.assert_close(result.before_adam, expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.after_adam, expected[1], atol=1e-5, rtol=0)


def test_wrappers_share_the_trained_network_and_adam_changes_the_field():
    torch.manual_seed(0)
    base = FeatureConvexEstimator(small_net(), radius=1)
    refined = wrapped(base, warps=2, ice=True, adam_iterations=3).eval()
    assert trained_network(refined) is base
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    result = refined.refine(fixed, moving, output_size=(8, 8, 8))
    assert result.after_adam.shape == (1, 3, 8, 8, 8)
    assert (result.after_adam - result.before_adam).abs().max() > 0
    torch.testing.assert_close(field_at(base, fixed, moving, (8, 8, 8)), base(fixed, moving, output_size=(8, 8, 8)))


def test_two_step_composes_two_translations_and_ice_keeps_an_inverse_pair():
    """A stand-in estimator that returns half the true shift: two steps recover the whole shift."""

    class HalfShift(torch.nn.Module):
        def forward(self, fixed, moving):
            shift = (moving.flatten(2).argmax(2) - fixed.flatten(2).argmax(2)).float()  # 1D peak offset
            return 0.5 * shift.view(-1, 1, 1, 1).expand(-1, 2, *fixed.shape[2:]) * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)

    fixed = torch.zeros(1, 1, 1, 32)
    fixed[..., 10] = 1.0
    moving = torch.roll(fixed, 4, dims=3)  # moving(x) = fixed(x - 4): u = +4 along the last axis
    field = TwoStep(HalfShift())(fixed, moving)
    torch.testing.assert_close(field[0, 1, 0, 8:24], torch.full((16,), 3.0))  # 2 + 1 (second step sees shift 2)
    constant = InverseConsistent(HalfShift(), iterations=5)(fixed, moving)
    torch.testing.assert_close(constant[0, 1, 0, 8:24], torch.full((16,), 2.0))  # u1=+2, u2=-2: already inverse


def test_regressor_without_io_features_needs_io_features_module():
    from regframe.estimators.unet_regressor import UNetRegressor

    refined = Refined(UNetRegressor(spatial_dims=2), InstanceOptimisation(iterations=1))
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(RegframeInputError, match="io_features"):
        refined(image, image)


def test_stage0_network_is_he_initialised_and_moves():
    """The stage-0 copy is freshly random (He init by default) and, unlike a PyTorch-default random
    network in eval mode, whose features shrink to nothing, it predicts a non-zero field."""
    torch.manual_seed(0)
    images = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    sizes = {}
    for init in ("default", "kaiming"):
        module = CyclicalSelfTraining(wrapped(FeatureConvexEstimator(small_net(), radius=1), 2, True, 0),
                                      stage0_init=init)
        random = module.random_stage0_estimator().eval()
        conv = trained_network(random).feature_net.late[1][0].weight
        assert not torch.equal(conv, trained_network(module.estimator).feature_net.late[1][0].weight)
        if init == "kaiming":
            assert abs(conv.std().item() / (2 / (8 * 27)) ** 0.5 - 1) < 0.2
        sizes[init] = random(*images).abs().mean().item()
    assert sizes["kaiming"] > 20 * sizes["default"]
    with pytest.raises(RegframeInputError, match="stage0_init"):
        CyclicalSelfTraining(stage0_init="xavier")
