"""The stage callbacks and CST's per-stage learning rate: difficulty weights and the sampling they
drive, the cosine warm restarts of CosineAnnealingWarmRestarts, the Dice table, and clear errors for
modules or trainers that do not fit."""

import math
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from callbacks.pseudo_labels import PseudoLabelRefresh
from callbacks.sampling import DifficultyWeightedSampling, difficulty_weights
from callbacks.stages import SelfTrainingStages, stage_table
from regframe.errors import RegframeInputError
from regframe.stages import StageSchedule


def test_difficulty_weights_favour_easy_pairs():
    difficulty = torch.tensor([0.5, 0.1, 0.9, 0.3])
    weights = difficulty_weights(difficulty)
    assert torch.argsort(weights, descending=True).tolist() == [1, 3, 0, 2]
    assert math.isclose(weights.max().item(), 1 / (1 + math.exp(-5)))
    assert math.isclose(weights.min().item(), 1 / (1 + math.exp(5)))


def test_sampler_draws_pairs_with_the_difficulty_weights(random_subjects):
    difficulty = torch.tensor([0.4, 0.1, 0.9, 0.3, 0.2, 0.6])
    trainer = SimpleNamespace(datamodule=random_subjects)
    sampling = DifficultyWeightedSampling()
    sampling.on_pseudo_labels(trainer, None, 0, difficulty)
    sampler = random_subjects.train_dataloader().sampler
    drawn = torch.tensor([index for _ in range(5000) for index in sampler])  # 30000 draws
    frequency = torch.bincount(drawn, minlength=6).double() / drawn.numel()
    expected = difficulty_weights(difficulty) / difficulty_weights(difficulty).sum()
    torch.testing.assert_close(frequency, expected, atol=0.01, rtol=0)  # binomial s.d. <= 0.003
    sampling.on_pseudo_labels(trainer, None, 1, torch.full((6,), 0.7))  # no information: uniform again
    assert random_subjects.sampler_weights is None


def test_lr_restarts_at_every_stage_start(tiny_cst, random_subjects):
    # 6 pairs at batch 2 = 3 optimiser steps per epoch, 2 epochs per stage: T_0 = 6 steps
    tiny_cst.optimizer_factory = partial(torch.optim.Adam, lr=1e-3)
    tiny_cst.lr_scheduler_factory = partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, eta_min=1e-5)
    tiny_cst.trainer = SimpleNamespace(datamodule=random_subjects, limit_train_batches=1.0, accumulate_grad_batches=1)
    config = tiny_cst.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and scheduler.T_0 == 6
    lrs = []
    for _ in range(18):  # what Lightning does every step: optimiser step, then scheduler step
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (step % 6) / 6)) for step in range(18)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == lrs[6] == lrs[12] == 1e-3 and all(a > b for a, b in zip(lrs[:5], lrs[1:6]))


def test_without_scheduler_the_lr_stays(tiny_cst):
    optimizer = tiny_cst.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)


def test_stage_table_and_stage_end_dice():
    staged = SimpleNamespace(schedule=StageSchedule.repeated("self_training", 2, 3), stage_dice={0: 0.25})
    trainer = SimpleNamespace(current_epoch=1, callback_metrics={"val/dice": torch.tensor(0.4)})
    callback = SelfTrainingStages()
    callback.on_train_epoch_end(trainer, staged)
    assert staged.stage_dice == {0: 0.25}  # epoch 1 is no stage end
    trainer.current_epoch = 5
    callback.on_train_epoch_end(trainer, staged)
    assert staged.stage_dice == {0: 0.25, 2: pytest.approx(0.4)}
    assert stage_table(staged.stage_dice).splitlines() == ["| stage | val Dice |", "|---|---|", "| 0 | 0.2500 |",
                                                           "| 2 | 0.4000 |"]


def test_callbacks_name_what_a_module_lacks(tiny_cst):
    trainer = SimpleNamespace(max_epochs=6, reload_dataloaders_every_n_epochs=2)
    with pytest.raises(TypeError, match=r"SelfTrainingStages needs a Staged module; LightningModule lacks "
                                        r"\['schedule', 'stage_dice'\]"):
        SelfTrainingStages().on_fit_start(trainer, pl.LightningModule())
    staged = SimpleNamespace(schedule=StageSchedule.repeated("s", 3, 2), stage_dice={})
    with pytest.raises(TypeError, match=r"PseudoLabelRefresh needs a SelfTraining module; SimpleNamespace lacks "
                                        r"\['generate_pseudo_labels', 'mean_val_dice', 'open_pseudo_labels', "
                                        r"'random_stage0_estimator'\]"):
        PseudoLabelRefresh().on_fit_start(trainer, staged)
    with pytest.raises(RegframeInputError, match="DifficultyWeightedSampling needs a datamodule with sampler_weights"):
        DifficultyWeightedSampling().setup(SimpleNamespace(datamodule=object()), tiny_cst, "fit")


def test_trainer_must_follow_the_stage_plan(tiny_cst):
    with pytest.raises(RegframeInputError, match=r"max_epochs=8 but the stage plan .* lasts 6 epochs"):
        SelfTrainingStages().on_fit_start(SimpleNamespace(max_epochs=8, fast_dev_run=False), tiny_cst)
    SelfTrainingStages().on_fit_start(SimpleNamespace(max_epochs=6, fast_dev_run=False), tiny_cst)
    with pytest.raises(RegframeInputError, match="reload_dataloaders_every_n_epochs=4 must divide every stage start"):
        PseudoLabelRefresh().on_fit_start(SimpleNamespace(reload_dataloaders_every_n_epochs=4), tiny_cst)
