"""NLL and β-NLL: the loss value and its gradients with a constant variance σ² (known answers)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from regframe.objectives.nll import NLL, BetaNLL

FIXED = torch.tensor([[0.0, 0.2], [0.4, 0.6]])[None, None]
WARPED = torch.tensor([[0.1, 0.1], [0.1, 0.1]])[None, None]
R2 = (FIXED - WARPED) ** 2
ZERO_DISP = torch.zeros(1, 2, 2, 2)
SIGMA2 = 0.05


class ConstantVariance(nn.Module):
    """``σ²`` a single trainable value; remembers the ``warped`` it was given."""

    def __init__(self, variance: float = SIGMA2) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(variance))

    def forward(self, target: Tensor, warped: Tensor) -> Tensor:
        self.seen_warped = warped
        return self.variance.expand_as(target)


def loss_and_grads(objective: NLL) -> tuple[float, Tensor, Tensor]:
    warped = WARPED.clone().requires_grad_()
    loss, _ = objective(FIXED, warped, ZERO_DISP)
    loss.backward()
    return loss.item(), warped.grad, objective.weight_net.variance.grad


def test_nll_value_and_gradients():
    objective = NLL(ConstantVariance())
    loss, grad_warped, grad_variance = loss_and_grads(objective)
    assert loss == pytest.approx((R2 / SIGMA2 + torch.log(torch.tensor(SIGMA2))).mean().item())
    torch.testing.assert_close(grad_warped, -2 * (FIXED - WARPED) / SIGMA2 / 4)  # d mean(r²/σ²) / d warped
    assert grad_variance.item() == pytest.approx((-R2 / SIGMA2**2 + 1 / SIGMA2).mean().item(), rel=1e-5)
    assert not objective.weight_net.seen_warped.requires_grad  # σ² does not feed back into the field


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_beta_nll_weights_each_term_by_a_detached_variance_power(beta: float):
    objective = BetaNLL(ConstantVariance(), beta=beta)
    loss, grad_warped, grad_variance = loss_and_grads(objective)
    weight = SIGMA2**beta
    nll = R2 / SIGMA2 + torch.log(torch.tensor(SIGMA2))
    assert loss == pytest.approx((nll * weight).mean().item(), rel=1e-6)
    torch.testing.assert_close(grad_warped, -2 * (FIXED - WARPED) / SIGMA2 * weight / 4)
    # a weight with gradient would add β σ^{2β−2} mean(nll) to this
    assert grad_variance.item() == pytest.approx(((-R2 / SIGMA2**2 + 1 / SIGMA2) * weight).mean().item(), rel=1e-5)


def test_beta_zero_is_nll_and_the_variance_is_logged_and_shown():
    nll, beta0 = NLL(ConstantVariance()), BetaNLL(ConstantVariance(), beta=0.0)
    assert loss_and_grads(beta0)[0] == pytest.approx(loss_and_grads(nll)[0])
    _, logs = nll(FIXED, WARPED, ZERO_DISP)
    assert logs["variance"].item() == pytest.approx(SIGMA2)
    assert set(nll.weight_maps(FIXED, WARPED)) == {"variance"} and not nll.separate_weight_net
