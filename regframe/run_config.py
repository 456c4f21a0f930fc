"""Saving the resolved LightningCLI config once per run, where runs cannot collide."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class RunConfigCallback(SaveConfigCallback):
    """Write ``config.yaml`` into the run's own directory and upload the full config to W&B.

    Lightning's default writes ``config.yaml`` into ``trainer.log_dir``, which is shared by every
    run that logs to W&B from one folder, so a second run aborts. Here the file goes to the W&B
    run directory (unique per run) or to the logger's versioned directory, and the resolved
    config is attached to the W&B run as its config.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = self.run_directory(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / self.config_filename
        tmp = run_dir / f".{self.config_filename}.tmp"
        self.parser.save(self.config, str(tmp), skip_none=False, overwrite=True, multifile=False)
        os.replace(tmp, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.parser.dump(self.config, skip_none=False, format="yaml")
                import yaml

                logger.experiment.config.update(yaml.safe_load(config), allow_val_change=True)
                logger.experiment.save(str(path), base_path=str(run_dir), policy="now")

    @staticmethod
    def run_directory(trainer: pl.Trainer) -> Path:
        """The directory that belongs to this run alone."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return Path(logger.experiment.dir)
        if trainer.log_dir is not None:
            return Path(trainer.log_dir)
        return Path(trainer.default_root_dir)
