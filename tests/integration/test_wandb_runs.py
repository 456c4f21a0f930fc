"""W&B logging works offline, keeps each run's resolved config apart and attaches it to the run."""

from __future__ import annotations

from pathlib import Path

import yaml

from regframe.cli import finish_wandb_run, main


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
