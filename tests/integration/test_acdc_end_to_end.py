"""ACDC end to end on the generated layout of tests/conftest.py: `fit` with the shipped AdaCS config,
then `test --ckpt_path` evaluates every ED -> ES slice pair of a testing/ folder it has never seen
(myocardium Dice, Hausdorff and average surface distances); without testing/, `test` stops with one
line naming the folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from regframe.cli import RegframeCLI, finish_wandb_run, main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TEST_CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def configs(*names: str) -> list[str]:
    return [a for name in names for a in ("--config", str(EXPERIMENTS / name), "--config", str(TEST_CONF / name))]


def test_fit_then_test_on_the_testing_folder(fake_acdc: Path, tmp_path: Path):
    fit = RegframeCLI(args=["fit", *configs("acdc_adacs.yaml"), "--data.init_args.root", str(fake_acdc),
                            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                            "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", str(tmp_path), *TINY])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path or fit.trainer.checkpoint_callback.last_model_path
    assert Path(checkpoint).is_file()
    test = RegframeCLI(args=["test", *configs("acdc_adacs.yaml"), "--data.init_args.root", str(fake_acdc),
                             "--ckpt_path", checkpoint, "--trainer.default_root_dir", str(tmp_path), *TINY])
    metrics = test.trainer.callback_metrics
    assert {"test/dice", "test/hd", "test/asd", "test/hd_mm", "test/asd_mm", "test/sdlogj", "test/fold_pct"} <= set(metrics)
    assert 0.0 < metrics["test/dice"].item() <= 1.0
    assert metrics["test/hd_mm"].item() == pytest.approx(1.5 * metrics["test/hd"].item(), rel=0.2)  # 1.5 x 1.25 mm pixels
    records = test.model.pair_records
    assert len(records) == 2 * 4 and all(r["pair_id"].startswith("patient10") for r in records)  # 2 test patients x 4 slices
    assert set(records[0]["dice_per_organ"]) == {"myocardium"}  # metric_labels: [2]


def test_test_without_a_testing_folder_names_it(fake_acdc: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "acdc"
    shutil.copytree(fake_acdc / "training", root / "training")
    finish_wandb_run()
    assert main(["test", *configs("acdc_adacs.yaml"), "--data.init_args.root", str(root), *TINY]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("regframe ")]
    assert errors == [f"regframe test: error: {root / 'testing'}: folder not found; lightning test evaluates the "
                      "ACDC test patients (101-150) in root/testing in the original layout"]
