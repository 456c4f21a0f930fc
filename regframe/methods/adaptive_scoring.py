"""AdaCS: adaptive correspondence scoring for unsupervised registration (Zhang et al., 2024), with
the residual-weighting baselines it is compared against.

Every mode trains the same displacement estimator ``u = f(I_t, I_s)`` (``fixed`` = target ``I_t``,
``moving`` = source ``I_s``) on the squared intensity residual ``r² = (I_t − I_s∘(id+u))²`` plus
``λ‖∇u‖²`` (forward differences, voxels), and differs in how ``r²`` or ``‖∇u‖²`` are weighted:

- ``vanilla``:   ``mean(r²) + λ‖∇u‖²``.
- ``nll``:       ``mean(r²/σ² + log σ²) + λ‖∇u‖²``, ``σ² = h(I_t, warped)`` trained jointly.
- ``beta_nll``:  NLL term × ``stopgrad(σ^{2β})`` (β = 0.5).
- ``adareg``:    ``mean(r²) + λ mean(α² ‖∇u‖²)``, ``α = exp(−c ρ/σ̄)``, ``ρ = |r|``, ``σ̄ = mean ρ``.
- ``adaframe``:  ``mean(α r²) + λ‖∇u‖²``, ``α = 1 − sigmoid(a ρ̂ − b)``, ``ρ̂`` the standardised
  ``|r|``, ``a = a₀/(μ+ε)``, ``b = b₀(1 − cos πμ)``, ``μ = mean |r|``.
- ``adacs``:     ``mean(stopgrad(S) r²) + λ‖∇u‖²`` for ``f``; the scorer ``S = g(I_t)`` minimises
  ``mean(S r²) + α mean((1−S)²) + β m_T mean(‖∇S‖²)`` with ``u`` detached, where
  ``m_T = γ m_{T−1} + (1−γ) cos(π/2 μ_T)``, ``μ_T = mean(r²)`` (clamped to [0, 1]), ``m_0 = 0``.
  Schedule (paper, Algorithm 1): epochs ``[0, N_w)`` displacement only with ``S = 1``,
  ``[N_w, 2N_w)`` scoring only, then one displacement and one scoring step per batch.

All adaptive weights of ``adareg``/``adaframe`` are constants (no gradient). Intensities are
expected in ``[0, 1]`` (the momentum's cosine assumes it). Two Adam optimisers, manual optimisation;
the graphs of the two steps are disjoint, so no gradient leaks between the networks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.features.scoring import ScoringUNet, VarianceUNet
from regframe.losses import diffusion, forward_differences
from regframe.methods.base import RegistrationModule
from regframe.spatial import warp

Mode = Literal["vanilla", "nll", "beta_nll", "adareg", "adaframe", "adacs"]
MODES = ("vanilla", "nll", "beta_nll", "adareg", "adaframe", "adacs")
Phase = Literal["displacement", "scoring", "alternate"]


def adam_1e4(params) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam with learning rate 1e-4."""
    return torch.optim.Adam(params, lr=1e-4)


class AdaptiveCorrespondenceScoring(RegistrationModule):
    """Unsupervised training of ``estimator`` with AdaCS or one of its baselines (see module doc).

    Args:
        estimator: the displacement estimator ``f``.
        mode: ``vanilla | nll | beta_nll | adareg | adaframe | adacs``.
        weight_net: the auxiliary network: a scorer ``g(I_t) -> S ∈ (0,1)`` (``adacs``) or a
            variance net ``h(I_t, warped) -> σ²`` (``nll``, ``beta_nll``); defaults to a small
            :class:`ScoringUNet` / :class:`VarianceUNet` with the estimator's dimensionality
            (``spatial_dims``). Unused in the other modes.
        spatial_dims: dimensionality for the default ``weight_net``.
        smoothness_weight: λ on ``‖∇u‖²``.
        score_reg_weight: α on ``mean((1−S)²)`` (adacs).
        score_tv_weight: β on ``m_T mean(‖∇S‖²)`` (adacs).
        momentum_decay: γ of the residual momentum (adacs).
        warmup_epochs: N_w (adacs): displacement-only then scoring-only epochs.
        nll_beta: β of β-NLL.
        adareg_c: c of AdaReg.
        adaframe_a0, adaframe_b0: a₀, b₀ of AdaFrame.
        optimizer: builds the optimiser of each network (default Adam, lr 1e-4).
    """

    def __init__(self, estimator: DisplacementEstimator, mode: Mode = "adacs", weight_net: nn.Module | None = None,
                 spatial_dims: int = 3, smoothness_weight: float = 0.01, score_reg_weight: float = 0.02,
                 score_tv_weight: float = 0.1, momentum_decay: float = 0.99, warmup_epochs: int = 10,
                 nll_beta: float = 0.5, adareg_c: float = 50.0, adaframe_a0: float = 0.1, adaframe_b0: float = 10.0,
                 optimizer: OptimizerCallable = adam_1e4, lr_scheduler: LRSchedulerCallable | None = None,
                 label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        super().__init__(estimator, optimizer=optimizer, lr_scheduler=lr_scheduler, label_warp=label_warp,
                         compute_hd95=compute_hd95)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.mode = mode
        if weight_net is None and mode == "adacs":
            weight_net = ScoringUNet(spatial_dims)
        elif weight_net is None and mode in ("nll", "beta_nll"):
            weight_net = VarianceUNet(spatial_dims)
        self.weight_net = weight_net if mode in ("adacs", "nll", "beta_nll") else None
        self.smoothness_weight = smoothness_weight
        self.score_reg_weight = score_reg_weight
        self.score_tv_weight = score_tv_weight
        self.momentum_decay = momentum_decay
        self.warmup_epochs = warmup_epochs
        self.nll_beta = nll_beta
        self.adareg_c = adareg_c
        self.adaframe_a0 = adaframe_a0
        self.adaframe_b0 = adaframe_b0
        self.register_buffer("residual_momentum", torch.zeros(()))  # m_T, saved in checkpoints
        self.automatic_optimization = False

    # ------------------------------------------------------------------ schedule
    def phase(self, epoch: int) -> Phase:
        """Which networks train in ``epoch`` (Algorithm 1); always ``displacement`` outside adacs."""
        if self.mode != "adacs" or epoch < self.warmup_epochs:
            return "displacement"
        if epoch < 2 * self.warmup_epochs:
            return "scoring"
        return "alternate"

    # ------------------------------------------------------------------ losses
    def _residual(self, batch: dict, disp: Tensor) -> tuple[Tensor, Tensor]:
        """Warped moving image and squared residual ``r²``, both ``(B, 1, *S)``."""
        warped = warp(batch["moving"], disp)
        return warped, (batch["fixed"] - warped).pow(2)

    def displacement_loss(self, batch: dict, use_score: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the displacement step (gradients reach the estimator, and the variance net in
        nll/beta_nll); with ``use_score=False`` adacs uses ``S = 1``. Returns (loss, logs)."""
        disp = self.estimator(batch["fixed"], batch["moving"])
        warped, r2 = self._residual(batch, disp)
        smooth = diffusion(disp)
        logs = {"residual": r2.mean().detach()}
        if self.mode == "vanilla":
            data = r2.mean()
        elif self.mode == "adacs":
            if use_score:
                with torch.no_grad():
                    score = self.weight_net(batch["fixed"])
                data = (score * r2).mean()
            else:
                data = r2.mean()
        elif self.mode in ("nll", "beta_nll"):
            var = self.weight_net(batch["fixed"], warped.detach())
            nll = r2 / var + var.log()
            if self.mode == "beta_nll":
                nll = nll * var.detach().pow(self.nll_beta)
            data = nll.mean()
            logs["variance"] = var.mean().detach()
        elif self.mode == "adareg":
            data = r2.mean()
            alpha = self.adareg_weight(r2.detach())
            diffs = forward_differences(disp)
            smooth = sum((_crop_like(alpha, d).pow(2) * d.pow(2)).mean() for d in diffs) / len(diffs)
            logs["weight"] = alpha.mean()
        else:  # adaframe
            alpha = self.adaframe_weight(r2.detach())
            data = (alpha * r2).mean()
            logs["weight"] = alpha.mean()
        logs["smoothness"] = smooth.detach()
        return data + self.smoothness_weight * smooth, logs

    def scoring_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Scorer objective ``L_scs + α L_reg + β m_T L_tv`` with the displacement detached; updates
        the momentum ``m_T`` (only in training). Gradients reach the scorer only."""
        with torch.no_grad():
            disp = self.estimator(batch["fixed"], batch["moving"])
            _, r2 = self._residual(batch, disp)
            mu = r2.mean().clamp(0.0, 1.0)
            if self.training:
                b = torch.cos(0.5 * math.pi * mu)
                self.residual_momentum.mul_(self.momentum_decay).add_((1.0 - self.momentum_decay) * b)
        score = self.weight_net(batch["fixed"])
        loss = scoring_objective(score, r2, self.score_reg_weight, self.score_tv_weight * self.residual_momentum)
        logs = {"score_mean": score.mean().detach(), "momentum": self.residual_momentum.clone(), "mu": mu}
        return loss, logs

    def adareg_weight(self, r2: Tensor) -> Tensor:
        """AdaReg's per-voxel smoothness weight ``exp(−c |r| / mean|r|)``, ``(B, 1, *S)``."""
        rho = r2.sqrt()
        sigma = rho.flatten(1).mean(1).view(-1, *([1] * (rho.dim() - 1)))
        return torch.exp(-self.adareg_c * rho / (sigma + 1e-8))

    def adaframe_weight(self, r2: Tensor, eps: float = 1e-8) -> Tensor:
        """AdaFrame's per-voxel data weight ``1 − sigmoid(a ρ̂ − b)``, ``(B, 1, *S)``."""
        delta = r2.sqrt()
        flat = delta.flatten(1)
        shape = (-1,) + (1,) * (delta.dim() - 1)
        mu, var = flat.mean(1).view(shape), flat.var(1, unbiased=False).view(shape)
        rho = (delta - mu) / torch.sqrt(var + eps)
        a = self.adaframe_a0 / (mu + eps)
        b = self.adaframe_b0 * (1.0 - torch.cos(math.pi * mu))
        return 1.0 - torch.sigmoid(a * rho - b)

    def weight_maps(self, batch: dict) -> dict[str, Tensor]:
        """Images for inspection, each ``(B, 1, *S)``: the squared residual and the mode's weight map
        (``score``, ``variance`` or ``weight``), without gradients."""
        with torch.no_grad():
            disp = self.estimator(batch["fixed"], batch["moving"])
            warped, r2 = self._residual(batch, disp)
            maps = {"residual": r2}
            if self.mode == "adacs":
                maps["score"] = self.weight_net(batch["fixed"])
            elif self.mode in ("nll", "beta_nll"):
                maps["variance"] = self.weight_net(batch["fixed"], warped)
            elif self.mode == "adareg":
                maps["weight"] = self.adareg_weight(r2)
            elif self.mode == "adaframe":
                maps["weight"] = self.adaframe_weight(r2)
        return maps

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        phase = self.phase(self.current_epoch)
        size = batch["fixed"].shape[0]
        if phase in ("displacement", "alternate"):
            loss, logs = self.displacement_loss(batch, use_score=phase == "alternate")
            self._step(optimizers[0] if self.mode == "adacs" else optimizers, loss)
            self.log("train/loss", loss.detach(), batch_size=size, prog_bar=True)
            for key, value in logs.items():
                self.log(f"train/{key}", value, batch_size=size)
        if phase in ("scoring", "alternate"):
            loss, logs = self.scoring_loss(batch)
            self._step(optimizers[1], loss)
            self.log("train/score_loss", loss.detach(), batch_size=size)
            for key, value in logs.items():
                self.log(f"train/{key}", value, batch_size=size)
        self.log("train/phase", float(("displacement", "scoring", "alternate").index(phase)), batch_size=size)
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()

    def _step(self, optimizers, loss: Tensor) -> None:
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        """One optimiser per network: ``[estimator]``, or ``[estimator, weight_net]``."""
        optimizers = [self.optimizer_factory(self.estimator.parameters())]
        if self.weight_net is not None:
            optimizers.append(self.optimizer_factory(self.weight_net.parameters()))
        if self.lr_scheduler_factory is None:
            return optimizers
        schedulers = [{"scheduler": self.lr_scheduler_factory(opt), "interval": "step"} for opt in optimizers]
        return optimizers, schedulers


def scoring_objective(score: Tensor, r2: Tensor, reg_weight: float, tv_weight: float | Tensor) -> Tensor:
    """AdaCS scorer loss ``mean(S r²) + reg_weight·mean((1−S)²) + tv_weight·mean(‖∇S‖²)`` for a score
    ``S (B, 1, *S)`` in (0, 1) and a fixed squared residual ``r²`` of the same shape; ``‖∇S‖²`` sums
    the squared forward differences over axes. Without the second term ``S = 0`` is optimal."""
    scs = (score * r2).mean()
    reg = (1.0 - score).pow(2).mean()
    tv = sum(d.pow(2).mean() for d in forward_differences(score))
    return scs + reg_weight * reg + tv_weight * tv


def _crop_like(weight: Tensor, diff: Tensor) -> Tensor:
    """Crop a full-grid ``weight`` to the grid of a forward difference (one voxel less on one axis)."""
    return weight[(slice(None), slice(None)) + tuple(slice(0, n) for n in diff.shape[2:])]
