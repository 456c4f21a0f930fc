"""AdaFrame: data weight ``1 − sigmoid(a ρ̂ − b)``, ``a = a₀/μ``, ``b = b₀(1 − cos πμ)``, a constant."""

from __future__ import annotations

import math

import pytest
import torch

from regframe.objectives.adaframe import AdaFrame

FIXED = torch.zeros(1, 1, 2, 2)
WARPED = torch.tensor([[0.0, 0.1], [0.2, 0.3]])[None, None]  # |r| = warped
ZERO_DISP = torch.zeros(1, 2, 2, 2)


def expected_weight(a0: float, b0: float) -> torch.Tensor:
    delta = [0.0, 0.1, 0.2, 0.3]
    mu = 0.15
    std = math.sqrt(sum((d - mu) ** 2 for d in delta) / 4)  # population std, 0.1118
    a, b = a0 / mu, b0 * (1 - math.cos(math.pi * mu))
    return torch.tensor([1 - 1 / (1 + math.exp(-(a * (d - mu) / std - b))) for d in delta]).view(1, 1, 2, 2)


@pytest.mark.parametrize("a0,b0", [(0.1, 10.0), (1.0, 2.0)])
def test_weight_matches_the_formula(a0: float, b0: float):
    weight = AdaFrame(a0=a0, b0=b0).weight((FIXED - WARPED) ** 2)
    torch.testing.assert_close(weight, expected_weight(a0, b0), atol=1e-6, rtol=1e-5)


def test_weight_is_in_range_and_falls_with_the_residual():
    weight = AdaFrame().weight(torch.linspace(0, 0.1, 64).view(1, 1, 8, 8)).flatten()
    assert weight.min() >= 0 and weight.max() <= 1 and torch.all(weight.diff() <= 1e-7)


def test_loss_and_gradient_use_the_weight_as_a_constant():
    objective = AdaFrame(a0=1.0, b0=2.0)
    warped = WARPED.clone().requires_grad_()
    loss, logs = objective(FIXED, warped, ZERO_DISP)
    loss.backward()
    weight = expected_weight(1.0, 2.0)
    assert loss.item() == pytest.approx((weight * WARPED**2).mean().item(), rel=1e-5)
    torch.testing.assert_close(warped.grad, weight * 2 * WARPED / 4, atol=1e-7, rtol=1e-5)
    assert logs["weight"].item() == pytest.approx(weight.mean().item(), rel=1e-5)
    assert set(objective.weight_maps(FIXED, WARPED)) == {"weight"}
