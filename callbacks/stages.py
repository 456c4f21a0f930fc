"""Stage structure of self-training: stage boundaries, per-stage cosine warm restarts of the
learning rate (step-wise), and a per-stage validation Dice table."""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


def cosine_lr(position: float, lr_max: float, lr_min: float) -> float:
    """Cosine annealing from ``lr_max`` (``position`` 0) to ``lr_min`` (``position`` 1)."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * min(max(position, 0.0), 1.0)))


class SelfTrainingStages(Callback):
    """Drive the stages of a self-training module.

    The module defines ``stages``, ``epochs_per_stage``, ``stage_of_epoch(epoch)``,
    ``is_stage_end(epoch)`` and a ``stage_dice`` dict. This callback

    - sets ``trainer.fit_loop.max_epochs = stages * epochs_per_stage`` (the module's stage plan wins),
    - sets the learning rate of every step from the global step alone, cosine from ``lr_max`` to
      ``lr_min`` within each stage (a warm restart at every stage start), so a resumed run continues
      at exactly the same position,
    - records ``val/dice`` at each stage end and prints the per-stage table when fitting ends.
    """

    def __init__(self, lr_max: float = 1e-3, lr_min: float = 1e-5, print_table: bool = True) -> None:
        self.lr_max = lr_max
        self.lr_min = lr_min
        self.print_table = print_table

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = pl_module.stages * pl_module.epochs_per_stage
        if trainer.max_epochs != planned:
            rank_zero_info(f"SelfTrainingStages: max_epochs set to {planned} "
                           f"({pl_module.stages} stages x {pl_module.epochs_per_stage} epochs)")
        trainer.fit_loop.max_epochs = planned

    def steps_per_stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or batches <= 0:
            raise RuntimeError("SelfTrainingStages needs a finite number of training batches per epoch")
        return pl_module.epochs_per_stage * batches

    def lr_at(self, global_step: int, steps_per_stage: int) -> float:
        return cosine_lr((global_step % steps_per_stage) / max(steps_per_stage - 1, 1), self.lr_max, self.lr_min)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        lr = self.lr_at(trainer.global_step, self.steps_per_stage(trainer, pl_module))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        pl_module.log("lr", lr, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not pl_module.is_stage_end(epoch):
            return
        dice = trainer.callback_metrics.get("val/dice")
        if dice is not None:
            stage = pl_module.stage_of_epoch(epoch)
            pl_module.stage_dice[stage] = float(dice)
            rank_zero_info(f"stage {stage} done: val Dice {float(dice):.4f}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.print_table and trainer.is_global_zero:
            print(stage_table(pl_module.stage_dice))


def stage_table(stage_dice: dict[int, float]) -> str:
    """Markdown table of validation Dice per stage (stage 0 = random-feature pseudo labels)."""
    lines = ["| stage | val Dice |", "|---|---|"]
    lines += [f"| {stage} | {dice:.4f} |" for stage, dice in sorted(stage_dice.items())]
    return "\n".join(lines)
