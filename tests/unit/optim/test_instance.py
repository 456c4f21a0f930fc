"""InstanceOptimisation: the Adam IO kernel with its settings, pooling and injected features."""

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.refine import Refined
from regframe.optim.adam import adam_instance_optimisation
from regframe.optim.instance import InstanceOptimisation
from regframe.spatial import warp


def smooth_features(shape, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *shape, generator=generator)
    for _ in range(3):
        x = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    return x * 20


def test_zero_iterations_leave_the_field_unchanged():
    disp = torch.randn(1, 3, 8, 8, 8)
    feat = torch.rand(1, 2, 4, 4, 4)
    assert InstanceOptimisation(iterations=0)(disp, feat, feat) is disp


def test_pools_the_features_then_runs_the_kernel():
    fixed, moving = smooth_features((12, 12, 12), 4, 1), smooth_features((12, 12, 12), 4, 2)
    disp = torch.zeros(1, 3, 12, 12, 12)
    io = InstanceOptimisation(similarity="neg_cos", grid_spacing=2, iterations=3, lr=0.5, data_weight=2.0,
                              smooth_weight=0.1, smooth_pools=1)
    pooled = [torch.nn.functional.avg_pool3d(f, 2) for f in (fixed, moving)]
    expected = adam_instance_optimisation(disp, *pooled, iterations=3, lr=0.5, data_weight=2.0, smooth_weight=0.1,
                                          data_term="neg_cos", smooth_pools=1)
    torch.testing.assert_close(io(disp, fixed, moving), expected, atol=0, rtol=0)


def test_refined_identity_with_injected_features_recovers_a_shift():
    """Refined around the zero field with IO on injected (identity) features recovers a small shift."""

    class Zero(torch.nn.Module):
        def forward(self, fixed, moving):
            return fixed.new_zeros(fixed.shape[0], 3, *fixed.shape[2:])

    fixed = smooth_features((16, 16, 16), 1, 3)
    shift = torch.tensor([1.0, -0.5, 0.5]).view(1, 3, 1, 1, 1)
    moving = warp(fixed, -shift.expand(1, 3, 16, 16, 16))  # moving(x) = fixed(x - shift): u = shift
    refined = Refined(Zero(), InstanceOptimisation(features=torch.nn.Identity(), iterations=60, lr=0.1,
                                                   smooth_weight=0.1, smooth_pools=1))
    result = refined.refine(fixed, moving)
    assert result.before_adam.abs().max() == 0
    inner = result.after_adam[:, :, 4:-4, 4:-4, 4:-4].mean((2, 3, 4))
    torch.testing.assert_close(inner, shift.view(1, 3), atol=0.15, rtol=0)


def test_bad_settings_name_the_option():
    with pytest.raises(RegframeInputError, match="grid_spacing"):
        InstanceOptimisation(grid_spacing=0)
