"""AdaReg: weight ``exp(−c|r|/mean|r|)`` (or ``exp(−c|r|·mean|r|)``) on the smoothness term, a constant for the gradient."""

from __future__ import annotations

import math

import pytest
import torch

from regframe.objectives.adareg import AdaReg

FIXED = torch.zeros(1, 1, 2, 2)
WARPED = torch.tensor([[0.0, 0.1], [0.2, 0.3]])[None, None]  # |r| = warped, mean |r| = 0.15
DISP = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [2.0, 2.0]]])[None]


def test_weight_is_exp_of_minus_c_times_relative_residual():
    weight = AdaReg(c=1.0).weight((FIXED - WARPED) ** 2)
    expected = torch.exp(-torch.tensor([[0.0, 2 / 3], [4 / 3, 2.0]]))[None, None]
    torch.testing.assert_close(weight, expected)
    ramp = AdaReg().weight(torch.linspace(0, 0.1, 64).view(1, 1, 8, 8)).flatten()
    assert ramp[0] == pytest.approx(1.0) and torch.all(ramp.diff() <= 0)


def test_source_code_variant_multiplies_local_and_mean_residual():
    weight = AdaReg(c=2.0, residual_scaling="product").weight((FIXED - WARPED) ** 2)
    expected = torch.exp(-2.0 * 0.15 * torch.tensor([[0.0, 0.1], [0.2, 0.3]]))[None, None]
    torch.testing.assert_close(weight, expected)
    # c = 50 on residuals of images in [0, 1]: the paper's ratio leaves almost no smoothing, the product almost all
    r2 = torch.full((1, 1, 4, 4), 0.05**2)
    assert AdaReg().weight(r2).max() < 1e-20
    assert AdaReg(residual_scaling="product").weight(r2).min() > 0.88
    with pytest.raises(ValueError, match="residual_scaling"):
        AdaReg(residual_scaling="sum")


def test_loss_weights_each_forward_difference_by_the_squared_weight_at_its_start():
    loss, logs = AdaReg(c=1.0, smooth_weight=0.1)(FIXED, WARPED, DISP)
    # axis 0: channel 1 differences 2, 2 at (0, 0), (0, 1); axis 1: channel 0 differences 1, 1 at (0, 0), (1, 0)
    axis0 = (4 * 1.0 + 4 * math.exp(-4 / 3)) / 4  # α² = exp(-2c|r|/mean|r|)
    axis1 = (1 * 1.0 + 1 * math.exp(-8 / 3)) / 4
    assert logs["smoothness"].item() == pytest.approx((axis0 + axis1) / 2)
    assert loss.item() == pytest.approx(0.035 + 0.1 * (axis0 + axis1) / 2)
    assert logs["weight"].item() == pytest.approx(sum(math.exp(-x) for x in (0, 2 / 3, 4 / 3, 2)) / 4)


def test_weight_is_a_constant_for_the_gradient():
    warped = WARPED.clone().requires_grad_()
    AdaReg(c=1.0)(FIXED, warped, DISP)[0].backward()
    torch.testing.assert_close(warped.grad, 2 * WARPED / 4)  # the data term's gradient only
    assert set(AdaReg().weight_maps(FIXED, WARPED)) == {"weight"}
