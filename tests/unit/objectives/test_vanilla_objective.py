"""Vanilla objective: ``mean(r²) + λ‖∇u‖²`` on a hand-computed 2 × 2 example."""

from __future__ import annotations

import pytest
import torch

from regframe.objectives.vanilla import Vanilla

FIXED = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None, None]
WARPED = torch.tensor([[0.5, 0.0], [0.0, 0.5]])[None, None]  # r² = [[.25, 0], [0, .25]], mean 0.125
# channel 0 changes along axis 1 only (differences 1, 1), channel 1 along axis 0 only (2, 2):
# mean squared forward difference 2 on axis 0 and 0.5 on axis 1, so ‖∇u‖² = (2 + 0.5) / 2 = 1.25
DISP = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [2.0, 2.0]]])[None]


def test_loss_is_mean_squared_residual_plus_weighted_diffusion():
    loss, logs = Vanilla(smooth_weight=0.1)(FIXED, WARPED, DISP)
    assert loss.item() == pytest.approx(0.125 + 0.1 * 1.25)
    assert logs["residual"].item() == pytest.approx(0.125) and logs["smoothness"].item() == pytest.approx(1.25)


def test_gradient_on_the_warped_image_is_that_of_the_mean_squared_error():
    warped = WARPED.clone().requires_grad_()
    Vanilla()(FIXED, warped, DISP)[0].backward()
    torch.testing.assert_close(warped.grad, -2 * (FIXED - WARPED) / 4)


def test_has_no_weight_map_and_no_weight_net():
    objective = Vanilla()
    assert objective.weight_maps(FIXED, WARPED) == {} and not list(objective.parameters())
    assert objective.schedule.stage_at(7).name == "displacement"
    with pytest.raises(NotImplementedError, match="Vanilla"):
        objective.weight_net_loss(FIXED, WARPED)
