"""AdaCS (Zhang et al., 2024): a scorer ``S = g(I_t) ∈ (0, 1)`` down-weights voxels without a valid
correspondence in the estimator's data term.

- Estimator: ``L_de = mean(stopgrad(S) r²) + λ‖∇u‖²``.
- Scorer (``u`` detached): ``L_s = mean(S r²) + α mean((1−S)²) + β m_T mean(‖∇S‖²)``, with the
  residual momentum ``m_T = γ m_{T−1} + (1−γ) cos(π/2 μ_T)``, ``μ_T = mean(r²)`` clamped to [0, 1],
  ``m_0 = 0`` (intensities in [0, 1]), updated once per training step from the first one: by the
  estimator's loss in the ``displacement`` stage, by the scorer's loss afterwards, so ``m_T`` is
  near ``cos(π/2 μ)`` (≈ 1 for small residuals) when scoring starts.
- Stages (Algorithm 1): ``N_w`` epochs ``displacement`` (estimator only, ``S = 1``), ``N_w`` epochs
  ``scoring`` (scorer only), then ``alternate`` (one estimator and one scorer step per batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from regframe.features.scoring import ScoringUNet
from regframe.losses import forward_differences
from regframe.objectives.residual import ResidualObjective
from regframe.stages import StageSchedule


class AdaCS(ResidualObjective):
    """Adaptive correspondence scoring; ``m_T`` is the buffer ``residual_momentum`` (in checkpoints).

    Args:
        weight_net: the scorer ``g(I_t) -> S`` ``(B, 1, *S)``; default a small :class:`ScoringUNet`
            with ``spatial_dims`` axes.
        spatial_dims: dimensionality of the default ``weight_net``.
        smooth_weight: λ on ``‖∇u‖²``.
        score_reg_weight: α on ``mean((1−S)²)``.
        score_tv_weight: β on ``m_T mean(‖∇S‖²)``.
        momentum_decay: γ.
        warmup_epochs: N_w, the length of the ``displacement`` and of the ``scoring`` stage (0: alternate from the start).
    """

    separate_weight_net = True

    def __init__(self, weight_net: nn.Module | None = None, spatial_dims: int = 3, smooth_weight: float = 0.01,
                 score_reg_weight: float = 0.02, score_tv_weight: float = 0.1, momentum_decay: float = 0.99,
                 warmup_epochs: int = 10) -> None:
        super().__init__(smooth_weight)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.weight_net = weight_net if weight_net is not None else ScoringUNet(spatial_dims)
        self.score_reg_weight = score_reg_weight
        self.score_tv_weight = score_tv_weight
        self.momentum_decay = momentum_decay
        warmup = [("displacement", warmup_epochs), ("scoring", warmup_epochs)] if warmup_epochs else []
        self.schedule = StageSchedule(warmup + [("alternate", 1)])
        self.register_buffer("residual_momentum", torch.zeros(()))

    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        """``mean(stopgrad(S) r²)`` in the ``alternate`` stage, ``mean(r²)`` (``S = 1``) before it; in the
        ``displacement`` stage (no scorer step) it also updates ``m_T``."""
        if stage == "displacement":
            self.update_momentum(r2)
        if stage != "alternate":
            return r2.mean(), {}
        with torch.no_grad():
            score = self.weight_net(fixed)
        return (score * r2).mean(), {}

    def update_momentum(self, r2: Tensor) -> Tensor:
        """Move ``m_T`` towards ``cos(π/2 μ_T)`` (only in training mode); returns ``μ_T = mean(r²)`` in [0, 1]."""
        with torch.no_grad():
            mu = r2.mean().clamp(0.0, 1.0)
            if self.training:
                target = torch.cos(0.5 * math.pi * mu)
                self.residual_momentum.mul_(self.momentum_decay).add_((1.0 - self.momentum_decay) * target)
        return mu

    def weight_net_loss(self, fixed: Tensor, warped: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_s`` for a detached ``warped``; updates ``m_T`` first. Gradients reach the scorer only."""
        r2 = (fixed - warped.detach()).pow(2)
        mu = self.update_momentum(r2)
        score = self.weight_net(fixed)
        loss = scoring_objective(score, r2, self.score_reg_weight, self.score_tv_weight * self.residual_momentum)
        return loss, {"score_mean": score.mean().detach(), "momentum": self.residual_momentum.clone(), "mu": mu}

    def weight_maps(self, fixed: Tensor, warped: Tensor) -> dict[str, Tensor]:
        return {"score": self.weight_net(fixed)}


def scoring_objective(score: Tensor, r2: Tensor, reg_weight: float, tv_weight: float | Tensor) -> Tensor:
    """Scorer loss ``mean(S r²) + reg_weight·mean((1−S)²) + tv_weight·mean(‖∇S‖²)`` for a score
    ``S (B, 1, *S)`` in (0, 1) and a fixed squared residual ``r²`` of the same shape; ``‖∇S‖²`` sums
    the squared forward differences over axes. Without the second term ``S = 0`` is optimal."""
    scs = (score * r2).mean()
    reg = (1.0 - score).pow(2).mean()
    tv = sum(d.pow(2).mean() for d in forward_differences(score))
    return scs + reg_weight * reg + tv_weight * tv
