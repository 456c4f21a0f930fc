"""Stage bookkeeping of a staged module (:class:`regframe.stages.Staged`): the ``stage`` metric and
a per-stage validation Dice table. The learning rate of each stage comes from the module's own
scheduler (e.g. CST's ``CosineAnnealingWarmRestarts``), which Lightning steps and checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from regframe.errors import RegframeInputError
from regframe.stages import Staged, require


class SelfTrainingStages(Callback):
    """Follow the stages of a :class:`~regframe.stages.Staged` module.

    - checks that ``trainer.max_epochs`` equals the schedule's total, except under ``fast_dev_run``
      (configs derive it from the
      stage plan, e.g. ``${mul:${..model.init_args.stages},${..model.init_args.epochs_per_stage}}``),
    - logs ``stage`` (1-based) and ``lr`` (of the first parameter group) at every step,
    - records ``val/dice`` at each stage end in ``stage_dice`` and prints the per-stage table when
      fitting ends (row 0: the module's result before training, if it recorded one).
    """

    def __init__(self, print_table: bool = True) -> None:
        self.print_table = print_table

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require(pl_module, Staged, type(self).__name__)
        planned = pl_module.schedule.total_epochs
        if trainer.max_epochs != planned and not trainer.fast_dev_run:
            raise RegframeInputError(
                f"trainer.max_epochs={trainer.max_epochs} but the stage plan {pl_module.schedule} lasts "
                f"{planned} epochs (set max_epochs to the plan's total or leave it derived from the model)")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        stage = pl_module.schedule.stage_at(trainer.current_epoch)
        pl_module.log("stage", float(stage.index + 1), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not pl_module.schedule.is_stage_end(epoch):
            return
        dice = trainer.callback_metrics.get("val/dice")
        if dice is not None:
            stage = pl_module.schedule.stage_at(epoch).index + 1
            pl_module.stage_dice[stage] = float(dice)
            rank_zero_info(f"stage {stage} done: val Dice {float(dice):.4f}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.print_table and trainer.is_global_zero:
            print(stage_table(pl_module.stage_dice))


def stage_table(stage_dice: dict[int, float]) -> str:
    """Markdown table of validation Dice per stage (stage 0 = before training, e.g. random features)."""
    lines = ["| stage | val Dice |", "|---|---|"]
    lines += [f"| {stage} | {dice:.4f} |" for stage, dice in sorted(stage_dice.items())]
    return "\n".join(lines)
