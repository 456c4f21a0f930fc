"""Training stops at the first non-finite loss, before its update, for every method (automatic and
manual optimisation): the error names the method, the step and the loss, and the last checkpoint
keeps the finite weights of the step before."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.methods.base import NonFiniteLossError, RegistrationModule

NAN_BATCH = 2


class PointwiseEstimator(DisplacementEstimator):
    """``u = conv1x1([fixed, moving])``: a tiny trainable estimator."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, kernel_size=1)

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return self.conv(torch.cat([fixed, moving], dim=1))


class TinyMethod(RegistrationModule):
    """Regresses the field ``fixed - moving`` on every axis (automatic optimisation)."""

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        disp = self.estimator(batch["fixed"], batch["moving"])
        return (disp - (batch["fixed"] - batch["moving"])).pow(2).mean()


class TinyManualMethod(TinyMethod):
    """The same loss with manual optimisation (as AdaCS and JRSS do)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(super().training_step(batch, batch_idx))
        optimizer.step()


def batches() -> list[dict[str, Tensor]]:
    """Four pairs of 4³ random images; the fixed image of pair ``NAN_BATCH`` holds one NaN."""
    generator = torch.Generator().manual_seed(0)
    items = [{"fixed": torch.rand(1, 1, 4, 4, 4, generator=generator),
              "moving": torch.rand(1, 1, 4, 4, 4, generator=generator)} for _ in range(4)]
    items[NAN_BATCH]["fixed"][0, 0, 1, 2, 3] = float("nan")
    return items


@pytest.mark.parametrize("method", [TinyMethod, TinyManualMethod])
def test_nan_loss_stops_before_the_update_and_last_checkpoint_stays_finite(method, tmp_path):
    torch.manual_seed(0)
    model = method(PointwiseEstimator(), optimizer=lambda params: torch.optim.Adam(params, lr=0.1))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoints], num_sanity_val_steps=0, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=rf"{method.__name__}: training loss is nan at global step {NAN_BATCH} "):
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches(), batch_size=None))
    assert trainer.global_step == NAN_BATCH  # the NaN step made no update
    weights = {k: v.detach().clone() for k, v in model.estimator.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values())
    # Lightning writes no checkpoint on an exception: last.ckpt is the one of the last finite step
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == NAN_BATCH
    for key, value in weights.items():
        assert torch.equal(last["state_dict"][f"estimator.{key}"], value)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]


def test_finite_losses_train_normally():
    torch.manual_seed(0)
    model = TinyMethod(PointwiseEstimator(), optimizer=lambda params: torch.optim.Adam(params, lr=0.1))
    data = batches()
    data[NAN_BATCH]["fixed"] = torch.nan_to_num(data[NAN_BATCH]["fixed"])
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert trainer.global_step == 4
    assert math.isfinite(float(model.estimator.conv.weight.sum()))


def test_embedding_pretraining_stops_on_a_nonfinite_loss_too():
    from regframe.methods.samconvex import AnatomicalEmbeddingPretraining

    module = AnatomicalEmbeddingPretraining(widths=(4, 4), fpn_width=4, local_dim=4, global_dim=4)
    module.on_before_backward(torch.tensor(1.5))  # finite: nothing happens
    with pytest.raises(NonFiniteLossError, match="AnatomicalEmbeddingPretraining: training loss is inf"):
        module.on_before_backward(torch.tensor(float("inf")))
