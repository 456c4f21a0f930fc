"""Where a run writes: its own directory (config, checkpoints, pseudo labels), never shared with
another run, and the W&B run a resumed fit continues.

* With a logger the run directory is Lightning's ``<save_dir>/<name>/<version>``, where
  ``ModelCheckpoint`` puts ``checkpoints/`` by default: for W&B ``<save_dir>/<project>/<run id>``,
  outside the W&B run's ``files/`` folder (which ``wandb sync`` uploads); for the CSV and
  TensorBoard loggers their ``log_dir``.
* Without a logger it is a fresh ``<default_root_dir>/version_<n>`` chosen once per trainer, and
  checkpoints without their own ``dirpath`` go to its ``checkpoints/`` (Lightning would put every
  logger-less run's checkpoints into one ``<default_root_dir>/checkpoints``).
* ``fit --ckpt_path X`` with a W&B logger continues the W&B run recorded in ``X``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import lightning.pytorch as pl
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger

from regframe.checkpoint import read_checkpoint
from regframe.errors import RegframeInputError

WANDB_RUN_KEY = "wandb_run_id"  # checkpoint entry: the id of the W&B run that wrote it
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc")  # --ckpt_path values Lightning resolves itself

_loggerless_run_dirs: WeakKeyDictionary[pl.Trainer, Path] = WeakKeyDictionary()


def run_directory(trainer: pl.Trainer) -> Path:
    """The directory that belongs to this run alone (not created here). A W&B run is started if it
    has not been yet (its id names the directory)."""
    loggers = [logger for logger in trainer.loggers if not isinstance(logger, DummyLogger)]
    if loggers:
        logger = loggers[0]
        if isinstance(logger, WandbLogger):
            _ = logger.experiment
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version
    if trainer not in _loggerless_run_dirs:
        _loggerless_run_dirs[trainer] = next_free_version(Path(trainer.default_root_dir))
    return _loggerless_run_dirs[trainer]


def next_free_version(root: Path) -> Path:
    """``root/version_<n>`` with the smallest ``n`` not taken yet."""
    n = 0
    while (root / f"version_{n}").exists():
        n += 1
    return root / f"version_{n}"


def free_file(path: Path) -> Path:
    """``path`` if it does not exist, else ``<stem>_<n><suffix>`` with the smallest free ``n >= 1``."""
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


class RunConfigCallback(SaveConfigCallback):
    """Write the resolved config into the run directory (``config.yaml``; a resumed run that shares
    the directory adds ``config_1.yaml``, ...), attach it to the W&B run, send logger-less
    checkpoints into the run directory, and record the W&B run id in every checkpoint."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not [logger for logger in trainer.loggers if not isinstance(logger, DummyLogger)]:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                    callback.dirpath = str(run_directory(trainer) / "checkpoints")
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = run_directory(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = free_file(run_dir / self.config_filename)
        tmp = run_dir / f".{path.name}.tmp"
        self.parser.save(self.config, str(tmp), skip_none=False, overwrite=True, multifile=False)
        os.replace(tmp, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.parser.dump(self.config, skip_none=False, format="yaml")
                logger.experiment.config.update(yaml.safe_load(config), allow_val_change=True)
                logger.experiment.save(str(path), base_path=str(run_dir), policy="now")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version is not None:
                checkpoint[WANDB_RUN_KEY] = logger.version


def continue_wandb_run(config: Namespace) -> None:
    """For ``fit --ckpt_path X`` (``config``: the ``fit`` section, before instantiation): a missing
    ``X`` is a one-line error, and a W&B logger without its own ``id`` gets the id of the run that
    wrote ``X``, so the resumed fit continues that run."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or str(ckpt_path) in LIGHTNING_CKPT_NAMES or "://" in str(ckpt_path) \
            or str(ckpt_path).startswith("registry"):
        return
    if not Path(ckpt_path).is_file():
        raise RegframeInputError(f"{ckpt_path}: checkpoint not found (--ckpt_path)")
    loggers = config.get("trainer.logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    wandb_loggers = [logger for logger in loggers if isinstance(logger, Namespace)
                     and str(logger.get("class_path", "")).endswith("WandbLogger")]
    if not wandb_loggers:
        return
    run_id = read_checkpoint(ckpt_path).get(WANDB_RUN_KEY)
    for logger in wandb_loggers:
        init_args = logger.get("init_args") or Namespace()
        if run_id and not init_args.get("id") and not init_args.get("version"):
            init_args["id"] = run_id
            logger["init_args"] = init_args
