"""W&B panels of every validation: what a registration researcher looks at.

:class:`ValidationPanels` logs, at each validation (not the sanity check),

- for the first ``pairs`` validation pairs, one image list ``val_panels/{pair_id}``: the fixed, moving
  and warped images (middle slice along ``axis`` for 3D, shared intensity scale), an overlay (fixed
  in magenta, warped in green: aligned structures turn grey) and the Jacobian-determinant map
  (:func:`jacobian_colours`: folding, ``det <= 0``, in black);
- the per-organ Dice of every validation pair as a ``wandb.Table`` ``val/dice_per_organ`` (organ
  names from the data module's ``label_names``; the same numbers are in the run directory's
  ``val_pairs.jsonl``, :mod:`regframe.pair_records`);
- when fitting starts at step 0, the stage-0 Dice that a self-training module recorded
  (``stage_dice[0]``, CST's random-feature pseudo labels, set by
  :class:`callbacks.pseudo_labels.PseudoLabelRefresh`) as the metric ``stage0/val_dice``, to every
  logger.

Images and the table need a ``WandbLogger``; without one they are skipped. The fields come from
``predict_displacement`` (the module's own evaluation field, test-time refinement included), so
each shown pair costs one more registration per validation.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.methods.base import RegistrationModule
from regframe.spatial import jacobian_determinant, warp

JACOBIAN_CAPTION = "det J: blue < 1 < red (log scale, saturated at 0.5 and 2), white = 1, black = folding (det <= 0)"


def middle_slice(volume: Tensor, axis: int = -1) -> np.ndarray:
    """The middle slice along spatial ``axis`` of a ``(*S)`` map (3D), or the map itself (2D), as
    float64 numpy."""
    volume = volume.detach().double().cpu()
    if volume.dim() == 3:
        volume = volume.select(axis, volume.shape[axis] // 2)
    return volume.numpy()


def jacobian_slice(disp: Tensor, axis: int = -1) -> np.ndarray:
    """Jacobian determinant of ``I + ∇u`` for a displacement ``(D, *S)`` in voxels, on the full grid
    ``S`` (central differences, the outer voxel copied from its neighbour), middle slice along
    ``axis`` for 3D."""
    det = jacobian_determinant(disp[None].double())  # (1, *S - 2)
    padded = torch.nn.functional.pad(det[:, None], [1] * (2 * det.dim() - 2), mode="replicate")[0, 0]
    return middle_slice(padded, axis)


def jacobian_colours(det: np.ndarray) -> np.ndarray:
    """RGB ``uint8 (H, W, 3)`` image of a determinant map ``(H, W)``: white at 1, towards blue for
    compression and red for expansion on a log2 scale saturated at 0.5 and 2, black where the
    map folds (``det <= 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.log2(np.where(det > 0, det, 1.0)), -1.0, 1.0)
    shrink, grow = np.clip(-t, 0.0, 1.0), np.clip(t, 0.0, 1.0)
    rgb = np.stack([1.0 - shrink, 1.0 - shrink - grow, 1.0 - grow], axis=-1)
    rgb[det <= 0] = 0.0
    return np.round(255.0 * rgb).astype(np.uint8)


def pair_panels(fixed: Tensor, moving: Tensor, disp: Tensor, axis: int = -1) -> tuple[list[np.ndarray], list[str]]:
    """Images and captions of one pair: fixed, moving, warped (``uint8``, one intensity scale for the
    three), the magenta/green overlay of fixed and warped, and the Jacobian-determinant colours.
    ``fixed``/``moving`` are ``(1, *S)`` images, ``disp`` is ``(D, *S)`` in voxels."""
    warped = warp(moving[None].float(), disp[None].float())[0]
    slices = [middle_slice(image[0], axis) for image in (fixed, moving, warped)]
    low, high = min(s.min() for s in slices), max(s.max() for s in slices)
    grey = [(s - low) / max(high - low, 1e-12) for s in slices]
    overlay = np.stack([grey[0], grey[2], grey[0]], axis=-1)
    det = jacobian_slice(disp, axis)
    images = [*(np.round(255.0 * g).astype(np.uint8) for g in [*grey, overlay]), jacobian_colours(det)]
    folding = 100.0 * float((det <= 0).mean())
    captions = ["fixed", "moving", "warped", "overlay: fixed magenta, warped green",
                f"{JACOBIAN_CAPTION}; slice min det {det.min():.3f}, folding {folding:.2f} %"]
    return images, captions


class ValidationPanels(pl.Callback):
    """Log image panels of the first ``pairs`` validation pairs, the per-organ Dice table and the
    stage-0 Dice (see the module docstring).

    Args:
        pairs: number of validation pairs shown (the first ones, in the validation order).
        axis: spatial axis whose middle slice is shown for 3D data (ignored for 2D).
    """

    def __init__(self, pairs: int = 2, axis: int = -1) -> None:
        if pairs < 0:
            raise RegframeInputError(f"ValidationPanels.pairs must be >= 0, got {pairs}")
        if axis not in (-3, -2, -1, 0, 1, 2):
            raise RegframeInputError(f"ValidationPanels.axis must be a spatial axis in -3..2, got {axis}")
        self.pairs = pairs
        self.axis = axis
        self._shown = 0

    @staticmethod
    def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, RegistrationModule):
            raise TypeError(f"ValidationPanels needs a RegistrationModule, got {type(pl_module).__name__}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage0 = getattr(pl_module, "stage_dice", {}).get(0)
        if stage0 is None or trainer.global_step != 0 or not math.isfinite(stage0):
            return
        for logger in trainer.loggers:
            logger.log_metrics({"stage0/val_dice": float(stage0)}, step=0)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shown = 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: RegistrationModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or not loggers or self._shown >= self.pairs:
            return
        disp = pl_module.predict_displacement(batch).float()
        for i in range(min(disp.shape[0], self.pairs - self._shown)):
            pair_id = batch["pair_id"][i] if "pair_id" in batch else f"{batch_idx}_{i}"
            images, captions = pair_panels(batch["fixed"][i], batch["moving"][i], disp[i], self.axis)
            for logger in loggers:
                logger.log_image(key=f"val_panels/{pair_id}", images=images, caption=captions, step=trainer.global_step)
            self._shown += 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: RegistrationModule) -> None:
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or not loggers or not pl_module.pair_records:
            return
        columns, rows = dice_table(pl_module.pair_records)
        for logger in loggers:
            logger.log_table(key="val/dice_per_organ", columns=columns, data=rows, step=trainer.global_step)


def dice_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns ``pair_id``, ``mean`` and one per organ (in order of appearance) and one row per
    pair record; an organ not scored in a pair is NaN."""
    organs = list(dict.fromkeys(organ for record in records for organ in record["dice_per_organ"]))
    rows = [[record["pair_id"], record["dice"],
             *(record["dice_per_organ"].get(organ, float("nan")) for organ in organs)] for record in records]
    return ["pair_id", "mean", *organs], rows
