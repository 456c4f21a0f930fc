"""Where runs write: every shipped config logs and checkpoints under ``runs/`` (never into the package
folder or the working directory), and a run without a logger gets its own versioned directory for its
config and checkpoints, so repeated runs never overwrite each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.loggers.logger import DummyLogger
from test_configs import CONF, CONFIGS, EXPERIMENTS, bases, data_location

from regframe.cli import RegframeCLI, main
from regframe.job_shards import quiet_run_options


def parsed(config: str, tmp_path: Path, paired_phantom: Path, request: pytest.FixtureRequest) -> RegframeCLI:
    """``config`` (after its bases, with its tests/conf override and the data in test folders) parsed
    and instantiated, not run, in the working directory ``tmp_path``."""
    configs = [*bases(config), EXPERIMENTS / config, CONF / config]
    location = tmp_path / "location.yaml"
    location.write_text(yaml.safe_dump({"data": {"init_args": data_location(configs, tmp_path, paired_phantom, request)}}))
    return RegframeCLI(args=[a for c in [*configs, location] for a in ("--config", str(c))], run=False)


def is_under(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_writes_logs_checkpoints_and_pseudo_labels_under_runs(config, tmp_path, paired_phantom,
                                                                             monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    trainer = parsed(config, tmp_path, paired_phantom, request).trainer
    runs = tmp_path / "runs"
    loggers = [logger for logger in trainer.loggers if not isinstance(logger, DummyLogger)]
    # logs (and checkpoints without a dirpath) go to <logger save_dir>/<name>/<version>, or without a
    # logger to <default_root_dir>/version_<n>
    roots = [logger.save_dir for logger in loggers] or [trainer.default_root_dir]
    roots += [callback.dirpath for callback in trainer.checkpoint_callbacks if callback.dirpath is not None]
    assert roots and all(root is not None and is_under(root, runs) for root in roots), roots
    pseudo_label_dir = getattr(trainer.lightning_module, "pseudo_label_dir", None)
    assert pseudo_label_dir is None or is_under(pseudo_label_dir, runs)
    assert not runs.exists() and not (tmp_path / "wandb").exists()  # nothing is written before fitting


def test_runs_without_logger_get_their_own_directory(tmp_path, paired_phantom, monkeypatch, capsys):
    """Two logger-less runs of one config: config and checkpoints in version_0/ and version_1/,
    nothing in the working directory."""
    monkeypatch.chdir(tmp_path)
    config = "prostate_weakly_supervised.yaml"
    configs = [EXPERIMENTS / config, CONF / config]
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], f"--data.init_args.root={paired_phantom}",
            "--trainer.logger=false", "--trainer.default_root_dir=runs/weakly", "--trainer.max_steps=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false"]
    for _ in range(2):
        assert main(args) == 0
    runs = tmp_path / "runs" / "weakly"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for run in runs.iterdir():
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["trainer"]["default_root_dir"] == "runs/weakly"
        assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["epoch=0-step=1.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_quiet_run_options_silence_a_logged_config(tmp_path, paired_phantom):
    """A benchmark's in-process run of a W&B-logged config: no logger, no progress bar, no model summary,
    checkpoints under the given folder."""
    configs = [EXPERIMENTS / "prostate_jrss.yaml", CONF / "prostate_jrss.yaml"]
    args = [*[a for c in configs for a in ("--config", str(c))], f"--data.init_args.root={paired_phantom}",
            *quiet_run_options(tmp_path / "job")]
    trainer = RegframeCLI(args=args, run=False).trainer
    assert trainer.logger is None
    assert trainer.progress_bar_callback is None
    assert not any(isinstance(c, ModelSummary) for c in trainer.callbacks)
    assert Path(trainer.default_root_dir) == tmp_path / "job"
