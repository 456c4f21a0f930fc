"""CST's ``loss_crop`` is checked against the label grid (image grid x ``label_resample_factor``)
before training: a crop that leaves no voxel made the loss the mean over nothing (NaN, zero
gradients) while the run went on and saved checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from callbacks.pseudo_labels import PseudoLabelRefresh
from regframe.errors import RegframeInputError
from regframe.losses import end_point_error


def test_a_crop_that_leaves_nothing_makes_the_loss_nan():
    """Why the check exists: 8 label voxels per axis minus 4 at each border is nothing."""
    field = torch.zeros(1, 3, 8, 8, 8, requires_grad=True)
    loss = end_point_error(field, torch.ones(1, 3, 8, 8, 8), crop=4)
    loss.backward()
    assert torch.isnan(loss) and torch.count_nonzero(field.grad) == 0
    assert end_point_error(field, torch.ones(1, 3, 8, 8, 8), crop=3).item() == pytest.approx(3 ** 0.5)


def test_crop_must_leave_a_voxel_of_the_label_grid(tiny_cst):
    # 16³ images at label_resample_factor 0.5: a label grid of 8³; crop 3 leaves 2 voxels per axis, 4 none
    tiny_cst.loss_crop = 3
    tiny_cst.check_loss_crop((16, 16, 16))
    tiny_cst.loss_crop = 4
    with pytest.raises(RegframeInputError, match=r"^model.init_args.loss_crop=4 crops away the whole label grid "
                                                 r"\(8, 8, 8\) \(image grid \(16, 16, 16\) x label_resample_factor 0.5\); "
                                                 r"use at most 3$"):
        tiny_cst.check_loss_crop((16, 16, 16))
    tiny_cst.loss_crop = 3
    with pytest.raises(RegframeInputError, match=r"label grid \(8, 8, 3\)"):  # one thin axis is enough
        tiny_cst.check_loss_crop((16, 16, 7))


def test_negative_crop_is_refused(tiny_cst):
    with pytest.raises(RegframeInputError, match="model.init_args.loss_crop must be >= 0, got -1"):
        type(tiny_cst)(tiny_cst.estimator, loss_crop=-1)


def test_fit_stops_at_setup_before_any_pseudo_label_or_step(tiny_cst, random_subjects, tmp_path):
    tiny_cst.loss_crop = 4
    trainer = pl.Trainer(max_epochs=6, reload_dataloaders_every_n_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[PseudoLabelRefresh()])
    with pytest.raises(RegframeInputError, match="model.init_args.loss_crop=4"):
        trainer.fit(tiny_cst, datamodule=random_subjects)
    assert trainer.global_step == 0 and tiny_cst.store is None
    assert not (tmp_path / "pl").exists() and not list(tmp_path.rglob("*.ckpt"))
