"""W&B logging works offline, keeps each run's resolved config apart and attaches it to the run; a
fit resumed from a checkpoint continues the W&B run that wrote it; pseudo labels stay out of the
folder W&B uploads."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from regframe.cli import RegframeCLI, finish_wandb_run, main
from regframe.run_config import WANDB_RUN_KEY


def write_config(tmp_path: Path) -> Path:
    config = {
        "model": {"class_path": "regframe.methods.base.RegistrationModule",
                  "init_args": {"estimator": {"class_path": "regframe.estimators.base.IdentityEstimator"},
                                "compute_hd95": False}},
        "data": {"class_path": "data_modules.phantom.PhantomDataModule",
                 "init_args": {"root": str(tmp_path / "phantom"), "subjects": 5, "shape": [20, 16, 24],
                               "val_subjects": 2}},
        "trainer": {"logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                               "init_args": {"project": "regframe-tests", "save_dir": str(tmp_path / "runs"),
                                             "group": "ci", "tags": ["identity"], "job_type": "validate"}},
                    "enable_progress_bar": False},
    }
    path = tmp_path / "identity.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_runs_in_one_folder_keep_separate_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    finish_wandb_run()  # a run left open by an earlier test would otherwise receive the first validation
    config = write_config(tmp_path)
    for _ in range(2):
        assert main(["validate", "--config", str(config)]) == 0
    saved = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*/files/config.yaml"))
    assert len(saved) == 2
    for path in saved:
        resolved = yaml.safe_load(path.read_text())
        assert resolved["model"]["init_args"]["estimator"]["class_path"] == "regframe.estimators.base.IdentityEstimator"
        assert resolved["data"]["init_args"]["shape"] == [20, 16, 24]


REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS, CONF = REPO / "experiments", REPO / "tests" / "conf"


def weakly_supervised_fit(paired_phantom: Path, *extra: str) -> list[str]:
    """``fit`` of the shipped W&B config prostate_weakly_supervised.yaml (offline, save_dir runs) with
    its test override on the 16³ paired phantom: one step, then one validation batch and a checkpoint."""
    config = "prostate_weakly_supervised.yaml"
    return ["fit", "--config", str(EXPERIMENTS / config), "--config", str(CONF / config),
            f"--data.init_args.root={paired_phantom}", "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false", *extra]


def test_resuming_from_a_checkpoint_continues_the_wandb_run(tmp_path, paired_phantom, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    finish_wandb_run()
    assert main(weakly_supervised_fit(paired_phantom, "--trainer.max_steps=1")) == 0
    [first] = sorted((tmp_path / "runs" / "regframe").glob("*/checkpoints/*.ckpt"))
    run_id = torch.load(first, weights_only=True)[WANDB_RUN_KEY]
    assert first.parts[-3] == run_id  # runs/<project>/<run id>/checkpoints
    assert main(weakly_supervised_fit(paired_phantom, "--trainer.max_steps=2", f"--ckpt_path={first}")) == 0
    # the resumed fit wrote into the same run: its checkpoint, a second config (the first kept), W&B's id
    run_dir = tmp_path / "runs" / "regframe" / run_id
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["epoch=0-step=1.ckpt",
                                                                               "epoch=1-step=2.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "epoch=1-step=2.ckpt", weights_only=True)[WANDB_RUN_KEY] == run_id
    assert sorted(p.name for p in run_dir.glob("config*.yaml")) == ["config.yaml", "config_1.yaml"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["ckpt_path"] is None
    assert yaml.safe_load((run_dir / "config_1.yaml").read_text())["ckpt_path"] == str(first)
    # W&B names each offline folder run-<time>-<id>, with "-1" appended when two start in the same second
    wandb_runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(p.name.split("-")[3] == run_id for p in wandb_runs)


def test_cst_pseudo_labels_live_in_the_run_directory_outside_wandb_files(tmp_path, monkeypatch):
    """Pseudo labels (about 1.1 GB per stage at paper scale) stay out of the W&B run's files/ folder,
    which ``wandb sync`` uploads."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    finish_wandb_run()
    ice = "--model.init_args.estimator.init_args.estimator.init_args.first.init_args"
    cli = RegframeCLI(args=[
        "fit", "--config", str(EXPERIMENTS / "abdomen_cst.yaml"), "--config", str(EXPERIMENTS / "demo.yaml"),
        f"{ice}.estimator.init_args.feature_net.init_args.channels=[4,8,8,8,8,8]", f"{ice}.estimator.init_args.radius=1",
        f"{ice}.iterations=1", "--model.init_args.estimator.init_args.io.init_args.iterations=1",
        "--model.init_args.compute_hd95=false", "--model.init_args.stages=1", "--model.init_args.epochs_per_stage=1",
        "--model.init_args.loss_crop=1", f"--data.init_args.root={tmp_path / 'phantom'}", "--data.init_args.subjects=5",
        "--data.init_args.val_subjects=2", "--data.init_args.shape=[32,32,32]", "--data.init_args.spacing=12.0",
        "--data.init_args.val_max_pairs=1", "--trainer.enable_progress_bar=false"])
    run = cli.trainer.logger.experiment
    store = cli.model.store.root.resolve()
    assert store == (tmp_path / "runs" / "regframe" / run.id / "pseudo_labels").resolve()
    assert not store.is_relative_to(Path(run.dir).resolve())  # run.dir: the W&B files/ folder
    assert (store / "manifest.json").is_file()
    finish_wandb_run()
