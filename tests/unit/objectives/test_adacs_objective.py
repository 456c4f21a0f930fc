"""AdaCS objective: L_de with a detached score, the scorer loss, the residual momentum and the stages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from regframe.objectives.adacs import AdaCS, scoring_objective

FIXED = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None, None]
WARPED = torch.tensor([[0.5, 0.0], [0.0, 0.5]])[None, None]  # r² = [[.25, 0], [0, .25]]
R2 = (FIXED - WARPED) ** 2
DISP = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [2.0, 2.0]]])[None]  # ‖∇u‖² = 1.25
SCORE = torch.tensor([[0.5, 1.0], [1.0, 0.2]])[None, None]


class FixedScore(nn.Module):
    """A scorer whose output is ``SCORE`` times a trainable gain (1 at the start)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, target: Tensor) -> Tensor:
        return self.gain * SCORE


# ---------------------------------------------------------------- L_de
def test_displacement_loss_uses_the_score_only_in_the_alternate_stage():
    objective = AdaCS(FixedScore(), smooth_weight=0.1)
    warped = WARPED.clone().requires_grad_()
    loss, _ = objective(FIXED, warped, DISP, "alternate")
    assert loss.item() == pytest.approx((0.5 * 0.25 + 0.2 * 0.25) / 4 + 0.1 * 1.25)
    loss.backward()
    torch.testing.assert_close(warped.grad, -2 * SCORE * (FIXED - WARPED) / 4)
    assert objective.weight_net.gain.grad is None  # stopgrad(S)
    warm_up, _ = objective(FIXED, WARPED, DISP, "displacement")
    assert warm_up.item() == pytest.approx(0.25 / 2 + 0.1 * 1.25)  # S = 1


# ---------------------------------------------------------------- scorer loss
def test_scoring_objective_value_by_hand():
    # mean(S r²) = 0.04375; mean((1−S)²) = 0.2225; squared forward differences 0.445 on each axis
    value = scoring_objective(SCORE, R2, 0.02, 0.1)
    assert value.item() == pytest.approx(0.04375 + 0.02 * 0.2225 + 0.1 * (0.445 + 0.445))


def optimise_score(r2: Tensor, reg_weight: float, steps: int = 300) -> Tensor:
    logits = torch.zeros_like(r2, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        scoring_objective(logits.sigmoid(), r2, reg_weight, 0.0).backward()
        opt.step()
    return logits.detach().sigmoid()


def test_scorer_does_not_collapse_with_regulariser_and_reaches_known_optimum():
    torch.manual_seed(0)
    r2 = torch.rand(1, 1, 12, 12) * 0.02  # squared residuals of images in [0, 1]
    score = optimise_score(r2, reg_weight=0.02)
    assert score.min() > 0.4  # far from the all-zero solution
    # per voxel, S r² + α (1 − S)² is minimal at S = 1 − r² / (2α)
    assert torch.allclose(score, 1 - r2 / 0.04, atol=0.03)
    collapsed = optimise_score(r2, reg_weight=0.0)
    assert collapsed.max() < 0.05  # without L_reg the trivial all-zero map wins


def test_tv_term_smooths_the_score():
    r2 = torch.zeros(1, 1, 12, 12)
    r2[..., ::2] = 0.03  # striped residual -> striped optimum without TV
    score = torch.full_like(r2, 0.5, requires_grad=True)
    assert torch.isclose(scoring_objective(score, r2, 0.02, 0.0), scoring_objective(score, r2, 0.02, 1.0))
    striped = (1 - r2 / 0.04).requires_grad_()
    assert scoring_objective(striped, r2, 0.02, 1.0) > scoring_objective(striped, r2, 0.02, 0.0)


# ---------------------------------------------------------------- momentum
def test_momentum_follows_the_paper():
    objective = AdaCS(FixedScore(), momentum_decay=0.9)
    assert objective.residual_momentum.item() == 0.0  # m_0 = 0
    mu = objective.update_momentum(R2)
    first = 0.1 * math.cos(math.pi / 2 * 0.125)
    assert mu.item() == pytest.approx(0.125) and objective.residual_momentum.item() == pytest.approx(first)
    objective.update_momentum(torch.full_like(R2, 3.0))  # μ clamped to 1: cos(π/2) = 0
    assert objective.residual_momentum.item() == pytest.approx(0.9 * first)
    objective.eval()
    objective.update_momentum(R2)  # no update outside training
    assert objective.residual_momentum.item() == pytest.approx(0.9 * first)
    assert "residual_momentum" in objective.state_dict()  # saved in checkpoints


def test_scorer_loss_updates_the_momentum_first_and_trains_only_the_scorer():
    objective = AdaCS(FixedScore(), score_reg_weight=0.02, score_tv_weight=0.1, momentum_decay=0.99)
    warped = WARPED.clone().requires_grad_()
    loss, logs = objective.weight_net_loss(FIXED, warped)
    momentum = 0.01 * math.cos(math.pi / 2 * 0.125)
    assert logs["momentum"].item() == pytest.approx(momentum) and logs["mu"].item() == pytest.approx(0.125)
    assert loss.item() == pytest.approx(scoring_objective(SCORE, R2, 0.02, 0.1 * momentum).item())
    loss.backward()
    assert warped.grad is None and objective.weight_net.gain.grad is not None


# ---------------------------------------------------------------- stages
def test_stages_follow_algorithm_1():
    names = [AdaCS(FixedScore(), warmup_epochs=2).schedule.stage_at(e).name for e in range(6)]
    assert names == ["displacement"] * 2 + ["scoring"] * 2 + ["alternate"] * 2
    assert AdaCS(FixedScore(), warmup_epochs=0).schedule.stage_at(0).name == "alternate"
    with pytest.raises(ValueError, match="warmup_epochs"):
        AdaCS(FixedScore(), warmup_epochs=-1)


def test_weight_map_is_the_score():
    maps = AdaCS(FixedScore()).weight_maps(FIXED, WARPED)
    assert list(maps) == ["score"] and torch.equal(maps["score"], SCORE)


def test_momentum_moves_from_the_first_displacement_step_once_per_step():
    """m_T = γ m_{T−1} + (1 − γ) cos(π/2 μ) from step 1: after n steps of constant μ, m_n = (1 − γⁿ) cos(π/2 μ)
    (the displacement stage updates it in the estimator's loss, later stages in the scorer's loss)."""
    gamma, mu = 0.9, 0.125
    objective = AdaCS(FixedScore(), momentum_decay=gamma, warmup_epochs=2)
    target = math.cos(math.pi / 2 * mu)
    for _ in range(5):
        objective(FIXED, WARPED, DISP, "displacement")
    assert objective.residual_momentum.item() == pytest.approx((1 - gamma ** 5) * target)
    objective.weight_net_loss(FIXED, WARPED)  # the scoring stage's step
    objective(FIXED, WARPED, DISP, "alternate")  # alternate: the estimator's loss leaves m_T alone ...
    objective.weight_net_loss(FIXED, WARPED)  # ... and the scorer's step updates it
    assert objective.residual_momentum.item() == pytest.approx((1 - gamma ** 7) * target)
    objective.eval()
    objective(FIXED, WARPED, DISP, "displacement")  # no update outside training
    assert objective.residual_momentum.item() == pytest.approx((1 - gamma ** 7) * target)


# ---------------------------------------------------------------- learning
def occluded_pair(generator: torch.Generator, size: int = 32, side: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """A target with a bright square occluder the source lacks: ``(target, warped source, occluder mask)``,
    each ``(1, 1, size, size)``; elsewhere both show the same smooth texture in [0, 0.5] up to small noise."""
    texture = torch.nn.functional.interpolate(torch.rand(1, 1, 4, 4, generator=generator), size=(size, size),
                                              mode="bilinear", align_corners=True) * 0.5
    y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., y:y + side, x:x + side] = True
    target = torch.where(mask, torch.ones(()), texture) + 0.01 * torch.randn(texture.shape, generator=generator)
    warped = texture + 0.01 * torch.randn(texture.shape, generator=generator)
    return target, warped, mask


def test_scorer_learns_to_score_down_an_occluder_visible_in_the_target_and_nothing_else():
    """Trained on pairs whose target shows a square occluder at random places, the scorer (it sees the
    target only) gives a new pair's occluder a low score and the rest a high one, as the per-voxel
    optimum 1 − r²/(2α) clipped to [0, 1] says (r² ≈ 0.25–1 inside: S* = 0; r² ≈ 2e-4 outside: S* ≈ 1)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    objective = AdaCS(spatial_dims=2, score_reg_weight=0.02, score_tv_weight=0.1)
    opt = torch.optim.Adam(objective.parameters(), lr=3e-3)
    for _ in range(150):
        target, warped, _ = (torch.cat(t) for t in zip(*(occluded_pair(generator) for _ in range(4))))
        loss, _ = objective.weight_net_loss(target, warped)
        opt.zero_grad()
        loss.backward()
        opt.step()
    target, _, mask = occluded_pair(torch.Generator().manual_seed(123))
    with torch.no_grad():
        score = objective.weight_net(target)
    away = ~torch.nn.functional.max_pool2d(mask.float(), 7, stride=1, padding=3).bool()  # > 3 px from it
    assert score[mask].mean() < 0.2
    assert score[away].mean() > 0.8 and score[away].min() > 0.5
