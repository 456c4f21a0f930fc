"""W&B image snapshots during training.

:class:`WeightMapSnapshot` shows, every ``every_n_steps`` training steps, the squared intensity
residual next to the method's weight map (AdaCS: the correspondence score; NLL: the variance;
AdaReg/AdaFrame: the adaptive weight) for the first pair of the current batch (the middle slice
along ``axis`` for 3D data). The module must be a :class:`regframe.stages.WeightMapSource`
(checked when training starts); nothing is logged unless the trainer logs to W&B.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from callbacks.validation_panels import middle_slice
from regframe.stages import WeightMapSource, require


def map_to_image(volume: Tensor, axis: int = -1) -> np.ndarray:
    """A ``(1, *S)`` map as a 2D float image in [0, 1] (min-max scaled; the middle slice along
    ``axis`` of the spatial axes for 3D)."""
    image = middle_slice(volume[0], axis)
    low, high = image.min(), image.max()
    return ((image - low) / max(high - low, 1e-12)).astype(np.float32)


class WeightMapSnapshot(pl.Callback):
    """Log the residual and the weight map of the first training pair as W&B images."""

    def __init__(self, every_n_steps: int = 100, axis: int = -1, key: str = "train/weight_maps") -> None:
        self.every_n_steps = every_n_steps
        self.axis = axis
        self.key = key

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require(pl_module, WeightMapSource, type(self).__name__)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: WeightMapSource, outputs, batch: dict,
                           batch_idx: int) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.global_step % self.every_n_steps:
            return
        first = {key: value[:1] for key, value in batch.items() if isinstance(value, Tensor)}
        maps = pl_module.weight_maps(first)
        names = list(maps)
        images = [map_to_image(maps[name][0], self.axis) for name in names]
        for logger in loggers:
            logger.log_image(key=self.key, images=images, caption=names, step=trainer.global_step)
