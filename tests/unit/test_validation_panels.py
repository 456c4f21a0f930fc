"""ValidationPanels: known Jacobian determinants and colours, panels of known fields, and what an
offline W&B validation run really logs (images, per-organ table) next to the per-pair records."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from callbacks.validation_panels import ValidationPanels, jacobian_colours, jacobian_slice, pair_panels
from data_modules.phantom import PhantomDataModule
from regframe.cli import finish_wandb_run
from regframe.estimators.base import IdentityEstimator
from regframe.methods.base import RegistrationModule
from regframe.spatial import affine_to_field

WHITE, RED, BLUE, BLACK = (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_jacobian_of_an_affine_field_is_its_determinant_everywhere(axis):
    matrix = torch.tensor([[1.2, 0.1, 0.0, 1.5], [0.0, 0.9, 0.05, -2.0], [0.02, 0.0, 1.1, 0.3]], dtype=torch.float64)
    disp = affine_to_field(matrix[None], (9, 10, 11))[0]  # u(x) = A x + t - x
    det = jacobian_slice(disp, axis)
    expected = float(torch.linalg.det(matrix[:, :3]))  # 1.1886
    assert det.shape == tuple(np.delete([9, 10, 11], axis))
    np.testing.assert_allclose(det, expected, rtol=0, atol=1e-12)


def test_jacobian_of_a_2d_affine_field():
    matrix = torch.tensor([[[0.8, 0.3, 0.0], [-0.1, 1.25, 2.0]]], dtype=torch.float64)
    det = jacobian_slice(affine_to_field(matrix, (7, 8))[0])
    np.testing.assert_allclose(det, 0.8 * 1.25 + 0.3 * 0.1, atol=1e-12)


def test_jacobian_colours_white_at_one_blue_red_saturated_black_when_folding():
    det = np.array([[1.0, 2.0, 0.5, 8.0, 0.1, 0.0, -0.3, 2 ** 0.25]])
    rgb = [tuple(int(c) for c in pixel) for pixel in jacobian_colours(det)[0]]
    assert rgb == [WHITE, RED, BLUE, RED, BLUE, BLACK, BLACK, (255, 191, 191)]


def test_a_reflection_folds_everywhere():
    reflection = torch.tensor([[[-1.0, 0.0, 0.0, 8.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]],
                              dtype=torch.float64)
    det = jacobian_slice(affine_to_field(reflection, (9, 9, 9))[0])
    np.testing.assert_allclose(det, -1.0, atol=1e-12)
    assert (jacobian_colours(det) == 0).all()


def test_panels_of_the_aligning_shift():
    """The moving image is the fixed one moved by 2 voxels along axis 0: the field u = +2 warps it
    back, so (away from the border) the warped panel equals the fixed one and the overlay is grey."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * 3, indexing="ij"))
    fixed = torch.exp(-((grid - 5.5) ** 2).sum(0) / 8.0)[None]
    moving = torch.roll(fixed, shifts=2, dims=1)  # moving(x) = fixed(x - 2 e_0)
    disp = torch.zeros(3, 12, 12, 12)
    disp[0] = 2.0
    images, captions = pair_panels(fixed, moving, disp, axis=-1)
    fixed_img, moving_img, warped_img, overlay, jacobian = images
    assert len(captions) == 5 and "folding 0.00 %" in captions[4]
    assert np.abs(warped_img[:10].astype(int) - fixed_img[:10].astype(int)).max() <= 1
    assert np.abs(moving_img.astype(int) - fixed_img.astype(int)).max() > 100  # the shift is visible unwarped
    np.testing.assert_array_equal(overlay[..., 0], fixed_img)
    np.testing.assert_array_equal(overlay[..., 1], warped_img)
    assert (jacobian == 255).all()  # det = 1: white


def test_stage0_dice_is_logged_at_step_zero_only(tmp_path):
    logger = CSVLogger(tmp_path)
    module = SimpleNamespace(stage_dice={0: 0.42, 1: 0.5})
    panels = ValidationPanels()
    panels.on_train_start(SimpleNamespace(loggers=[logger], global_step=0), module)
    panels.on_train_start(SimpleNamespace(loggers=[logger], global_step=7), SimpleNamespace(stage_dice={0: 0.9}))
    logger.save()
    with (Path(logger.log_dir) / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"step": "0", "stage0/val_dice": "0.42"}]


def validate_identity(tmp_path: Path, logger) -> RegistrationModule:
    """Validate the identity on 3 phantom pairs (16³) with the panels of 2 pairs."""
    data = PhantomDataModule(root=str(tmp_path / "phantom"), subjects=5, val_subjects=3, shape=(16, 16, 16),
                             spacing=12.0)
    module = RegistrationModule(IdentityEstimator(), compute_hd95=False)
    trainer = pl.Trainer(logger=logger, callbacks=[ValidationPanels(pairs=2)], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, datamodule=data)
    return module


def test_offline_wandb_run_holds_the_panels_and_the_organ_table(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    log_image = WandbLogger.log_image

    def recording_log_image(self, key, images, step=None, **kwargs):
        calls.append((key, len(images), step))
        log_image(self, key, images, step, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_image", recording_log_image)
    finish_wandb_run()
    module = validate_identity(tmp_path, WandbLogger(project="regframe-tests", save_dir=str(tmp_path / "runs")))
    finish_wandb_run()
    assert calls == [("val_panels/0003_0004", 5, 0), ("val_panels/0003_0005", 5, 0)]
    (files,) = (tmp_path / "runs" / "wandb").glob("offline-run-*/files")
    # W&B stores each distinct image once (the identity's warped image is the moving one)
    images = sorted(p.name for p in (files / "media" / "images" / "val_panels").glob("*.png"))
    assert {name.rsplit("_", 2)[0] for name in images} == {"0003_0004", "0003_0005"} and len(images) >= 2 * 4
    (table_file,) = (files / "media" / "table" / "val").glob("dice_per_organ_*.table.json")
    table = json.loads(table_file.read_text())
    organs = list(module.trainer.datamodule.label_names.values())
    assert table["columns"][:2] == ["pair_id", "mean"] and set(table["columns"][2:]) <= set(organs)
    (run_dir,) = (tmp_path / "runs" / "regframe-tests").glob("*")       # the run's own directory
    records = [json.loads(line) for line in (run_dir / "val_pairs.jsonl").read_text().splitlines()]
    pair_ids = ["0003_0004", "0003_0005", "0004_0005"]
    assert [row[0] for row in table["data"]] == [r["pair_id"] for r in records] == pair_ids
    for row, record in zip(table["data"], records):
        assert row[1] == pytest.approx(record["dice"])
        organ_row = dict(zip(table["columns"][2:], row[2:]))
        assert {organ: organ_row[organ] for organ in record["dice_per_organ"]} == record["dice_per_organ"]
        assert all(np.isnan(v) for organ, v in organ_row.items() if organ not in record["dice_per_organ"])


def test_without_wandb_nothing_but_the_records_is_written(tmp_path):
    logger = CSVLogger(tmp_path / "logs")
    validate_identity(tmp_path, logger)
    written = sorted(p.name for p in Path(logger.log_dir).iterdir())
    assert written == ["hparams.yaml", "metrics.csv", "val_pairs.jsonl"]


def test_bad_arguments_name_the_option():
    with pytest.raises(ValueError, match="ValidationPanels.pairs"):
        ValidationPanels(pairs=-1)
    with pytest.raises(ValueError, match="ValidationPanels.axis"):
        ValidationPanels(axis=3)
