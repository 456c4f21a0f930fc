"""Every JRSS experiment config parses and runs all of its stages for a step on tiny data."""

import os
from pathlib import Path

import pytest

from callbacks.ema import EMATeacher
from regframe.cli import RegframeCLI

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", ROOT / ".." / "shared" / "data"))
SHORT_SCHEDULE = ["--model.init_args.seg_pretrain_epochs=1", "--model.init_args.reg_pretrain_epochs=1",
                  "--model.init_args.rounds=1", "--model.init_args.reg_epochs_per_round=1",
                  "--model.init_args.warmup_steps=1", "--model.init_args.compute_hd95=false",
                  "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
                  "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                  "--trainer.enable_model_summary=false"]


def run(config: str, tmp_path: Path, extra: list[str]) -> RegframeCLI:
    args = ["fit", f"--config={ROOT / 'experiments' / config}", f"--trainer.default_root_dir={tmp_path}",
            *SHORT_SCHEDULE, *extra]
    return RegframeCLI(args=args)


def test_abdomen_jrss_on_phantom(tmp_path):
    phantom = ["--data=data_modules.phantom.PhantomDataModule", f"--data.root={tmp_path / 'phantom'}",
               "--data.subjects=5", "--data.val_subjects=2", "--data.shape=[16,16,16]", "--data.spacing=12.0",
               "--data.batch_size=2", "--data.val_max_pairs=1", "--model.init_args.num_labelled=2",
               "--trainer.max_epochs=4", "--trainer.check_val_every_n_epoch=4"]
    cli = run("abdomen_jrss.yaml", tmp_path, phantom)
    assert cli.trainer.current_epoch == 4
    assert len(cli.model.hparams["labelled_ids"]) == 2
    assert {"val/seg_dice", "val/dice"} <= set(cli.trainer.callback_metrics)
    registration, student = cli.model.registration_loss, cli.model.student_loss   # the YAML's loss weights arrive
    assert (registration.smooth_weight, registration.smooth_weight_warmup, registration.dice_weight) == (0.025, 0.1, 0.1)
    assert (student.uncertainty_weight, student.seg_dice_weight) == (0.5, 1.0)
    ema = next(c for c in cli.trainer.callbacks if isinstance(c, EMATeacher))
    assert (ema.ramp, ema.buffers) == (False, "keep") and cli.model.teacher() is ema.teacher


@pytest.mark.real_data
@pytest.mark.parametrize("config,epochs", [("prostate_jrss.yaml", 4), ("prostate_mono_seg.yaml", 1),
                                           ("prostate_mono_reg.yaml", 1)])
def test_prostate_configs_on_a_few_real_cases(tmp_path, config, epochs):
    if not (DATA / "prostate_mr_us").is_dir():
        pytest.skip(f"real data not found at {DATA / 'prostate_mr_us'}")
    few_cases = [f"--data.init_args.root={DATA / 'prostate_mr_us'}", "--data.init_args.split=[0.07,0.02,0.0]",
                 "--data.init_args.target_shape=[32,32,32]", "--data.init_args.val_max_pairs=1",
                 f"--trainer.max_epochs={epochs}", f"--trainer.check_val_every_n_epoch={epochs}",
                 "--model.init_args.seg_pretrain_epochs=1" if epochs == 1 else "--model.init_args.rounds=1"]
    if config == "prostate_mono_reg.yaml":
        few_cases[-1] = "--model.init_args.reg_pretrain_epochs=1"
    cli = run(config, tmp_path, few_cases)
    assert cli.trainer.current_epoch == epochs
    assert "val/dice" in cli.trainer.callback_metrics
