"""A CST run stopped in the middle of a stage resumes with the same stage, learning-rate position
(the scheduler's checkpointed state), sampler weights and pseudo labels."""

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import WeightedRandomSampler

from callbacks.pseudo_labels import PseudoLabelRefresh
from callbacks.sampling import DifficultyWeightedSampling
from callbacks.stages import SelfTrainingStages
from data_modules.phantom import PhantomDataModule
from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.refine import Refined
from regframe.estimators.two_step import TwoStep
from regframe.features.cnn import CSTFeatureNet
from regframe.optim.instance import InstanceOptimisation
from regframe.methods.cyclical import CyclicalSelfTraining
from regframe.pseudo_labels import PseudoLabelStore


class Probe(Callback):
    """Records the state seen at every training step."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append({
            "step": trainer.global_step, "stage": pl_module.schedule.stage_at(trainer.current_epoch).index + 1,
            "lr": trainer.optimizers[0].param_groups[0]["lr"], "labels": pl_module.store.served_stage,
            "labels_all": pl_module.store.read(range(len(trainer.datamodule.train_pairs))).clone(),
            "weights": None if trainer.datamodule.sampler_weights is None else trainer.datamodule.sampler_weights.clone(),
            "weighted_loader": isinstance(trainer.train_dataloader.sampler, WeightedRandomSampler),
        })


def make_run(tmp_path, max_steps, probe):
    pl.seed_everything(0)
    data = PhantomDataModule(root=str(tmp_path / "phantom"), subjects=5, shape=(32, 32, 32), spacing=12.0,
                             val_subjects=2, batch_size=2, val_max_pairs=1)
    net = CSTFeatureNet(channels=(4, 8, 8, 8, 8, 8), out_channels=4, io_channels=4)
    estimator = Refined(TwoStep(InverseConsistent(FeatureConvexEstimator(net, radius=1), iterations=2)),
                        InstanceOptimisation(iterations=2))
    model = CyclicalSelfTraining(estimator, optimizer=partial(torch.optim.Adam, lr=1e-3),
                                 lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, eta_min=1e-5),
                                 stages=2, epochs_per_stage=2, loss_crop=1, compute_hd95=False,
                                 pseudo_label_dir=str(tmp_path / "pl"))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = pl.Trainer(max_epochs=4, max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=2,
                         num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[SelfTrainingStages(print_table=False), PseudoLabelRefresh(evaluate_stage0=False),
                                    DifficultyWeightedSampling(), probe, checkpoint])
    return trainer, model, data


def cosine_lr(step: int, steps_per_stage: int = 4) -> float:
    """Cosine from 1e-3 to 1e-5 over a stage, restarting at every stage start."""
    return 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (step % steps_per_stage) / steps_per_stage))


def test_resume_mid_stage(tmp_path):
    # 3 training pairs, batch 2 -> 2 steps per epoch, 4 steps per stage; stop after step 5 (in stage 2)
    stopped = Probe()
    trainer, model, data = make_run(tmp_path, 5, stopped)
    trainer.fit(model, datamodule=data)
    assert [s["step"] for s in stopped.steps] == [0, 1, 2, 3, 4]
    assert [s["labels"] for s in stopped.steps] == [0, 0, 0, 0, 1]
    # stage 1 already draws with the stage-0 difficulty weights (the LR set-up did not build its loader early)
    assert all(s["weighted_loader"] for s in stopped.steps)
    assert [s["lr"] for s in stopped.steps] == pytest.approx([cosine_lr(step) for step in range(5)], rel=1e-12)
    labels_at_stop = PseudoLabelStore(tmp_path / "pl", 3, model.store.shape)
    labels_at_stop.use_stage(1)
    resumed = Probe()
    trainer, model, data = make_run(tmp_path, 8, resumed)
    trainer.fit(model, datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    first = resumed.steps[0]
    assert first["step"] == 5 and first["stage"] == 2 and first["labels"] == 1
    # LR continues inside the stage-2 restart (step 1 of 4), not from its top or from the start
    assert [s["lr"] for s in resumed.steps] == pytest.approx([cosine_lr(step) for step in range(5, 8)], rel=1e-12)
    assert first["lr"] < stopped.steps[4]["lr"] == 1e-3
    torch.testing.assert_close(first["weights"], stopped.steps[4]["weights"])
    torch.testing.assert_close(first["labels_all"], labels_at_stop.read(range(3)))
    assert model.store.root == tmp_path / "pl" and trainer.global_step == 8
