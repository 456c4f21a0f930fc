"""Pseudo-label generation and refresh for cyclical self-training."""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from regframe.errors import RegframeInputError


class PseudoLabelRefresh(Callback):
    """Generate stage-0 pseudo labels from a random network when a run starts, and new labels with
    the current network at every stage end (after that stage's validation, before the next stage's
    dataloader is built).

    The trainer must rebuild the training dataloader at stage starts, so that sampler weights set at a
    refresh take effect: ``reload_dataloaders_every_n_epochs`` must divide ``epochs_per_stage``.
    Use ``epochs_per_stage`` itself: the data modules seed a fresh sampler at every reload, so
    reloading every epoch would repeat the same order of pairs in every epoch. Other callbacks with
    an ``on_pseudo_labels(trainer, module, stage, difficulty)`` method (e.g.
    :class:`callbacks.sampling.DifficultyWeightedSampling`) are told about each refresh.
    ``evaluate_stage0`` also scores the random network's refined fields on the validation pairs and
    records them as stage 0 of the Dice table.
    """

    def __init__(self, evaluate_stage0: bool = True) -> None:
        self.evaluate_stage0 = evaluate_stage0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reload = trainer.reload_dataloaders_every_n_epochs
        if not reload or pl_module.epochs_per_stage % reload:
            raise RegframeInputError(
                f"trainer.reload_dataloaders_every_n_epochs={reload} must divide epochs_per_stage="
                f"{pl_module.epochs_per_stage} so that refreshed sampler weights are used (set it to epochs_per_stage)")
        store = pl_module.open_pseudo_labels(trainer)
        if store.served_stage is not None:
            rank_zero_info(f"pseudo labels: resuming with stage {store.served_stage} from {store.root}")
            return
        start = time.perf_counter()
        random_estimator = pl_module.random_stage0_estimator().to(pl_module.device)
        difficulty = pl_module.generate_pseudo_labels(trainer.datamodule, 0, random_estimator)
        rank_zero_info(f"pseudo labels: stage 0 (random features) for {len(difficulty)} pairs "
                       f"in {time.perf_counter() - start:.1f} s")
        if self.evaluate_stage0 and trainer.datamodule.val_pairs:
            dice = pl_module.mean_val_dice(random_estimator, trainer.datamodule.val_dataloader())
            pl_module.stage_dice[0] = dice
            rank_zero_info(f"stage 0 (random features, refined): val Dice {dice:.4f}")
        self._notify(trainer, pl_module, 0, difficulty)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        stage = pl_module.stage_of_epoch(epoch)
        if not pl_module.is_stage_end(epoch) or stage >= pl_module.stages:
            return
        start = time.perf_counter()
        difficulty = pl_module.generate_pseudo_labels(trainer.datamodule, stage)
        rank_zero_info(f"pseudo labels: stage {stage} refreshed in {time.perf_counter() - start:.1f} s")
        self._notify(trainer, pl_module, stage, difficulty)

    @staticmethod
    def _notify(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, difficulty) -> None:
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_pseudo_labels", None)
            if callable(hook):
                hook(trainer, pl_module, stage, difficulty)
