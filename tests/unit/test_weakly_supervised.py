"""Weakly supervised registration: the loss is the stated formula on boxes with known overlap, label
supervision alone recovers a known shift, and its YAML trains and registers on a tiny phantom."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from regframe.cli import RegframeCLI, main
from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.io import read_displacement
from regframe.methods.weakly_supervised import WeaklySupervised

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SMOOTH = 1e-5  # MONAI DiceLoss's smooth_nr = smooth_dr


class Translation(DisplacementEstimator):
    """A constant displacement ``shift`` (voxels per axis) as the only trainable parameter."""

    def __init__(self, shift: list[float]) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift, dtype=torch.float32))

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (fixed.dim() - 2)
        return self.shift.view(view).expand(fixed.shape[0], -1, *fixed.shape[2:])


def box(start: int, size: tuple[int, int] = (20, 20)) -> Tensor:
    """Label map ``(1, 1, *size)``: 1 on rows ``[start, start + 4)`` x columns ``[8, 12)``, else 0."""
    label = torch.zeros(1, 1, *size, dtype=torch.long)
    label[..., start:start + 4, 8:12] = 1
    return label


def pair(fixed_start: int = 6, moving_start: int = 8, images: bool = True) -> dict[str, Tensor]:
    fixed, moving = box(fixed_start), box(moving_start)
    scale = 1.0 if images else 0.0
    return {"fixed": scale * fixed.float(), "moving": scale * moving.float(), "fixed_label": fixed,
            "moving_label": moving}


def test_zero_field_loss_is_image_mse_plus_weighted_one_minus_dice():
    method = WeaklySupervised(Translation([0.0, 0.0]), num_classes=2, dice_weight=0.3, smooth_weight=5.0)
    terms = method.loss_terms(pair(6, 8))
    # boxes of 16 pixels overlapping in 2 of 4 rows: |A∩B| = 8, |AΔB| = 16 of 400 pixels
    dice = (2 * 8 + SMOOTH) / (16 + 16 + SMOOTH)
    assert terms["similarity"].item() == pytest.approx(16 / 400)
    assert terms["dice"].item() == pytest.approx(1 - dice)
    assert terms["diffusion"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(16 / 400 + 0.3 * (1 - dice))


def test_aligning_translation_zeroes_every_term():
    # warped(x) = moving(x + 2): the moving box at rows 8-11 lands on the fixed box at rows 6-9
    method = WeaklySupervised(Translation([2.0, 0.0]), num_classes=2, dice_weight=1.0, smooth_weight=1.0)
    terms = method.loss_terms(pair(6, 8))
    assert terms["similarity"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["dice"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_batch_without_labels_trains_on_image_terms_only():
    method = WeaklySupervised(Translation([0.5, 0.0]), num_classes=2, dice_weight=10.0, smooth_weight=5.0)
    batch = {key: value for key, value in pair(6, 8).items() if key in ("fixed", "moving")}
    terms = method.loss_terms(batch)
    assert "dice" not in terms
    assert terms["loss"].item() == pytest.approx(terms["similarity"].item())  # a constant field: diffusion 0


def test_labels_beyond_num_classes_are_a_clear_input_error():
    batch = pair(6, 8)
    batch["fixed_label"] = 2 * batch["fixed_label"]
    with pytest.raises(RegframeInputError, match="num_classes=2"):
        WeaklySupervised(Translation([0.0, 0.0]), num_classes=2).loss_terms(batch)
    with pytest.raises(RegframeInputError, match="similarity"):
        WeaklySupervised(Translation([0.0, 0.0]), num_classes=2, similarity="mind")


def test_label_supervision_alone_recovers_a_shifted_box():
    """Blank images carry no signal, so only the Dice term can find the 2-row shift."""
    batch = pair(6, 8, images=False)
    method = WeaklySupervised(Translation([0.0, 0.0]), num_classes=2, dice_weight=1.0, smooth_weight=1.0,
                              optimizer=lambda params: torch.optim.Adam(params, lr=0.1), compute_hd95=False)
    before = method.loss_terms(batch)["loss"].item()
    trainer = pl.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(method, DataLoader([batch] * 60, batch_size=None))
    torch.testing.assert_close(method.estimator.shift.detach(), torch.tensor([2.0, 0.0]), atol=0.15, rtol=0)
    after = method.loss_terms(batch)
    assert before == pytest.approx(0.5, abs=1e-4) and after["loss"].item() < 0.05
    assert 1 - after["dice"].item() > 0.95  # identity Dice: 0.5


def tiny_phantom(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"class_path": "data_modules.phantom.PhantomDataModule",
                 "init_args": {"root": str(tmp_path / "phantom"), "subjects": 4, "val_subjects": 2,
                               "shape": [16, 16, 16], "val_max_pairs": 1, "batch_size": 1}},
        "trainer": {"logger": False, "max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                    "check_val_every_n_epoch": 1, "default_root_dir": str(tmp_path / "run"),
                    "enable_progress_bar": False}}))
    return path


def test_abdomen_yaml_trains_on_a_phantom_and_its_checkpoint_registers(tmp_path: Path):
    cli = RegframeCLI(args=["fit", "--config", str(EXPERIMENTS / "abdomen_weakly_supervised.yaml"),
                            "--config", str(tiny_phantom(tmp_path))])
    assert isinstance(cli.model, WeaklySupervised) and cli.model.num_classes == 14
    assert cli.trainer.global_step == 1
    assert {"train/dice", "train/similarity", "val/dice"} <= set(cli.trainer.callback_metrics)
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    images = sorted((tmp_path / "phantom").rglob("imagesTr/*.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(images[0]), str(images[1]), "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    disp = read_displacement(out / "disp.nii.gz", (16, 16, 16))
    assert torch.isfinite(disp).all() and disp.abs().max() > 0
