"""AdaCS: adaptive correspondence scoring for unsupervised registration (Zhang et al., 2024), and
the residual-weighting baselines it is compared against, as one thin training loop.

The method trains a displacement estimator ``u = f(I_t, I_s)`` (``fixed`` = target ``I_t``,
``moving`` = source ``I_s``) on the loss of a :class:`~regframe.objectives.residual.ResidualObjective`
chosen in YAML (``regframe.objectives``: ``vanilla.Vanilla``, ``nll.NLL``, ``nll.BetaNLL``,
``adareg.AdaReg``, ``adaframe.AdaFrame``, ``adacs.AdaCS``). The objective's stage schedule says per
epoch whether the estimator, the objective's separately trained weight net, or both take a step.
Two optimisers (estimator, objective's weight net), manual optimisation; the graphs of the two
steps are disjoint, so no gradient leaks between the networks. An estimator with a loss of its own
(:class:`~regframe.estimators.protocols.AuxiliaryLossSource`, e.g. DiffuseMorph's diffusion loss)
has it added to the estimator's loss, whatever the objective.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.protocols import auxiliary_loss
from regframe.methods.base import RegistrationModule
from regframe.objectives.residual import STAGES, ResidualObjective
from regframe.spatial import warp


def adam_1e4(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam with learning rate 1e-4."""
    return torch.optim.Adam(params, lr=1e-4)


class AdaptiveCorrespondenceScoring(RegistrationModule):
    """Unsupervised training of ``estimator`` on ``objective`` (a :class:`~regframe.stages.WeightMapSource`).

    Args:
        estimator: the displacement estimator ``f``.
        objective: the training signal (AdaCS or a baseline) with its weight net, if any.
        optimizer: builds the optimiser of each network (default Adam, lr 1e-4).
        lr_scheduler: optional scheduler factory, one scheduler per optimiser.
        lr_scheduler_interval: ``"step"``: the schedulers step after every batch; ``"epoch"``: after every
            epoch (e.g. ``CosineAnnealingLR`` with ``T_max`` = the run's epochs, whatever the epoch length).
        label_warp, compute_hd95, metric_labels, surface_distances: evaluation, as in :class:`RegistrationModule`.
    """

    def __init__(self, estimator: DisplacementEstimator, objective: ResidualObjective,
                 optimizer: OptimizerCallable = adam_1e4, lr_scheduler: LRSchedulerCallable | None = None,
                 lr_scheduler_interval: Literal["step", "epoch"] = "step",
                 label_warp: str = "nearest", compute_hd95: bool = True, metric_labels: Sequence[int] | None = None,
                 surface_distances: bool = False) -> None:
        super().__init__(estimator, optimizer=optimizer, lr_scheduler=lr_scheduler, label_warp=label_warp,
                         compute_hd95=compute_hd95, metric_labels=metric_labels, surface_distances=surface_distances)
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', not {lr_scheduler_interval!r}")
        self.objective = objective
        self.lr_scheduler_interval = lr_scheduler_interval
        self.automatic_optimization = False

    def align(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The estimator's displacement ``(B, D, *S)`` (voxels) and the moving image warped by it ``(B, 1, *S)``."""
        disp = self.estimator(batch["fixed"], batch["moving"])
        return disp, warp(batch["moving"], disp)

    def weight_maps(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Images for inspection, each ``(B, 1, *S)``: the squared residual ``residual`` and the
        objective's weight maps (``score``, ``variance`` or ``weight``), without gradients."""
        with torch.no_grad():
            _, warped = self.align(batch)
            return {"residual": (batch["fixed"] - warped).pow(2), **self.objective.weight_maps(batch["fixed"], warped)}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        stage = self.objective.schedule.stage_at(self.current_epoch).name
        size = batch["fixed"].shape[0]
        if stage != "scoring":
            disp, warped = self.align(batch)
            loss, logs = self.objective(batch["fixed"], warped, disp, stage)
            extra = auxiliary_loss(self.estimator, batch["fixed"], batch["moving"])
            if extra is not None:
                loss, logs = loss + extra, {**logs, "auxiliary_loss": extra.detach()}
            self._step(optimizers[:1] if self.objective.separate_weight_net else optimizers, loss)
            self.log("train/loss", loss.detach(), batch_size=size, prog_bar=True)
            self.log_dict({f"train/{key}": value for key, value in logs.items()}, batch_size=size)
        if stage != "displacement":
            with torch.no_grad():
                _, warped = self.align(batch)
            loss, logs = self.objective.weight_net_loss(batch["fixed"], warped)
            self._step(optimizers[1:], loss)
            self.log("train/score_loss", loss.detach(), batch_size=size)
            self.log_dict({f"train/{key}": value for key, value in logs.items()}, batch_size=size)
        self.log("stage", float(STAGES.index(stage)), batch_size=size)
        if self.lr_scheduler_interval == "step":
            self._step_schedulers()

    def on_train_epoch_end(self) -> None:
        if self.lr_scheduler_interval == "epoch":
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()

    def _step(self, optimizers: list[torch.optim.Optimizer], loss: Tensor) -> None:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def configure_optimizers(self) -> list | tuple[list, list]:
        """One optimiser per network: ``[estimator]``, or ``[estimator, objective's weight net]``."""
        optimizers = [self.optimizer_factory(self.estimator.parameters())]
        weight_net_parameters = list(self.objective.parameters())
        if weight_net_parameters:
            optimizers.append(self.optimizer_factory(weight_net_parameters))
        if self.lr_scheduler_factory is None:
            return optimizers
        schedulers = [{"scheduler": self.lr_scheduler_factory(opt), "interval": self.lr_scheduler_interval}
                      for opt in optimizers]
        return optimizers, schedulers
