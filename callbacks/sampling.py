"""Difficulty-weighted sampling of training pairs (CST): easy pairs are drawn more often."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from regframe.errors import RegframeInputError


def difficulty_weights(difficulty: Tensor, spread: float = 5.0) -> Tensor:
    """Sampling weights from per-pair difficulties: rank pairs by ascending difficulty and give the
    pair of rank ``k`` the weight ``sigmoid(linspace(+spread, -spread, N))[k]`` (the easiest pair
    gets ``sigmoid(5)``, the hardest ``sigmoid(-5)``)."""
    difficulty = torch.as_tensor(difficulty, dtype=torch.float64).flatten()
    ranked = torch.sigmoid(torch.linspace(spread, -spread, difficulty.numel(), dtype=torch.float64))
    weights = torch.empty_like(ranked)
    weights[torch.argsort(difficulty, stable=True)] = ranked
    return weights


class DifficultyWeightedSampling(Callback):
    """Hand :func:`difficulty_weights` to ``datamodule.sampler_weights`` whenever pseudo labels are
    refreshed: a :class:`~regframe.stages.PseudoLabelListener` told by
    :class:`callbacks.pseudo_labels.PseudoLabelRefresh`. When all pairs are equally difficult (e.g.
    no Adam in the refinement) sampling stays uniform. The datamodule checkpoints its weights, so a
    resumed run samples as before."""

    def __init__(self, spread: float = 5.0) -> None:
        self.spread = spread

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not hasattr(trainer.datamodule, "sampler_weights"):
            raise RegframeInputError(f"DifficultyWeightedSampling needs a datamodule with sampler_weights; "
                                     f"{type(trainer.datamodule).__name__} has none")

    def on_pseudo_labels(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: int,
                         difficulty: Tensor) -> None:
        difficulty = torch.as_tensor(difficulty)
        if difficulty.numel() == 0 or torch.all(difficulty == difficulty.flatten()[0]):
            trainer.datamodule.sampler_weights = None  # no information (e.g. refinement without Adam): uniform
            return
        trainer.datamodule.sampler_weights = difficulty_weights(difficulty, self.spread)
