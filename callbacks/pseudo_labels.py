"""Pseudo-label generation and refresh for cyclical self-training."""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.stages import PseudoLabelListener, SelfTraining, require


class PseudoLabelRefresh(Callback):
    """Generate stage-0 pseudo labels from a random network when a run starts, and new labels with
    the current network at every stage end but the last (after that stage's validation, before the
    next stage's dataloader is built), for a :class:`~regframe.stages.SelfTraining` module.

    The trainer must rebuild the training dataloader at stage starts, so that sampler weights set at a
    refresh take effect: every stage must start at a multiple of ``reload_dataloaders_every_n_epochs``.
    Use the stage length itself: the data modules seed a fresh sampler at every reload, so
    reloading every epoch would repeat the same order of pairs in every epoch. Callbacks that are
    :class:`~regframe.stages.PseudoLabelListener` (e.g.
    :class:`callbacks.sampling.DifficultyWeightedSampling`) are told about each refresh.
    ``evaluate_stage0`` also scores the random network's refined fields on the validation pairs and
    records them as stage 0 of the Dice table.
    """

    def __init__(self, evaluate_stage0: bool = True) -> None:
        self.evaluate_stage0 = evaluate_stage0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require(pl_module, SelfTraining, type(self).__name__)
        reload = trainer.reload_dataloaders_every_n_epochs
        if not reload or any(stage.start % reload for stage in pl_module.schedule.stages):
            raise RegframeInputError(
                f"trainer.reload_dataloaders_every_n_epochs={reload} must divide every stage start of "
                f"{pl_module.schedule} so that refreshed sampler weights are used (set it to the stage length)")
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
        stage = pl_module.schedule.stage_at(epoch).index + 1
        if not pl_module.schedule.is_stage_end(epoch) or stage >= len(pl_module.schedule):
            return
        start = time.perf_counter()
        difficulty = pl_module.generate_pseudo_labels(trainer.datamodule, stage)
        rank_zero_info(f"pseudo labels: stage {stage} refreshed in {time.perf_counter() - start:.1f} s")
        self._notify(trainer, pl_module, stage, difficulty)

    @staticmethod
    def _notify(trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int, difficulty: Tensor) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, PseudoLabelListener):
                callback.on_pseudo_labels(trainer, pl_module, stage, difficulty)
