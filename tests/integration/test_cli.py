"""The command line: the stage plan in configs, unknown keys fail, and register/evaluate work end to
end on a tiny phantom (that every experiment config runs is tests/integration/test_configs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regframe.cli import main
from regframe.io import read_displacement, read_image

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"


def printed_trainer(capsys, *args: str) -> dict:
    """The ``trainer`` section that ``regframe fit <args> --print_config`` prints."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["trainer"]


def test_trainer_epochs_follow_the_stage_plan(capsys):
    """``max_epochs``, validation and dataloader reloads derive from the model's stage plan after
    all configs and overrides are merged: the demo's 3 stages x 6 epochs give 18, not the paper's 88."""
    paper = printed_trainer(capsys, "--config", str(EXPERIMENTS / "abdomen_cst.yaml"))
    assert (paper["max_epochs"], paper["check_val_every_n_epoch"], paper["reload_dataloaders_every_n_epochs"]) == (88, 11, 11)
    demo = ["--config", str(EXPERIMENTS / "abdomen_cst.yaml"), "--config", str(EXPERIMENTS / "demo.yaml")]
    trainer = printed_trainer(capsys, *demo)
    assert (trainer["max_epochs"], trainer["check_val_every_n_epoch"], trainer["reload_dataloaders_every_n_epochs"]) == (3 * 6, 6, 6)
    trainer = printed_trainer(capsys, *demo, "--model.init_args.stages=5", "--model.init_args.epochs_per_stage=2")
    assert (trainer["max_epochs"], trainer["check_val_every_n_epoch"]) == (10, 2)
    assert printed_trainer(capsys, *demo, "--trainer.max_epochs=7")["max_epochs"] == 7  # an explicit value wins


def test_unresolvable_interpolation_names_the_option(tmp_path, capsys):
    overlay = tmp_path / "absolute.yaml"
    overlay.write_text("trainer:\n  max_epochs: ${model.init_args.stages}\n")  # absolute: not found under fit.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / "abdomen_cst.yaml"), "--config", str(overlay), "--print_config"])
    assert exit_info.value.code != 0
    assert "fit.trainer.max_epochs: Interpolation key 'model.init_args.stages' not found" in capsys.readouterr().err


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  class_path: regframe.methods.base.RegistrationModule\n  init_args:\n"
                      "    estimator:\n      class_path: regframe.estimators.base.IdentityEstimator\n"
                      "    not_a_parameter: 3\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code != 0
    assert "not_a_parameter" in capsys.readouterr().err


def test_list_methods_prints_registered_names(capsys):
    assert main(["register", "--list-methods"]) == 0
    names = capsys.readouterr().out.split()
    assert {"identity", "affine"} <= set(names)


def test_register_unknown_method_names_choices(tmp_path, capsys):
    assert main(["register", "a.nii.gz", "b.nii.gz", "--out", str(tmp_path), "--method", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "identity" in err


def test_register_missing_checkpoint(tmp_path, capsys):
    assert main(["register", "a.nii.gz", "b.nii.gz", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "x.ckpt")]) == 2
    assert "x.ckpt: checkpoint not found" in capsys.readouterr().err


def test_register_then_evaluate_on_phantom(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--subjects", "4", "--shape", "40", "32", "44"]) == 0
    dataset = Path(capsys.readouterr().out.strip().splitlines()[-1])
    spec = json.loads(dataset.read_text())
    pair = spec["registration_val"][0]
    fixed, moving = (dataset.parent / pair["fixed"]), (dataset.parent / pair["moving"])
    assert main(["register", str(fixed), str(moving), "--out", str(tmp_path / "one"), "--method", "affine"]) == 0
    assert read_displacement(tmp_path / "one" / "disp.nii.gz", (40, 32, 44)).abs().max() > 0
    fixed_img, moving_img = read_image(fixed).array, read_image(moving).array
    warped_img = read_image(tmp_path / "one" / "warped.nii.gz").array
    assert ((warped_img - fixed_img) ** 2).mean() < 0.8 * ((moving_img - fixed_img) ** 2).mean()

    assert main(["register", "--dataset", str(dataset), "--out", str(tmp_path / "disp"), "--method", "affine"]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--dataset", str(dataset), "--disp-dir", str(tmp_path / "disp"), "--out", str(out)]) == 0
    affine = json.loads(out.read_text())
    assert main(["evaluate", "--dataset", str(dataset), "--disp-dir", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "m0.json"), "--allow-missing"]) == 0
    before = json.loads((tmp_path / "m0.json").read_text())
    assert len(affine["cases"]) == len(spec["registration_val"])
    assert not any(case["missing"] for case in affine["cases"]) and all(case["missing"] for case in before["cases"])
    assert before["aggregate"]["fold_pct"]["mean"] == 0.0
    assert affine["aggregate"]["dice"]["mean"] != before["aggregate"]["dice"]["mean"]


def test_evaluate_missing_displacement_is_an_error(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "ph"), "--subjects", "4", "--shape", "16", "16", "16"]) == 0
    dataset = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["evaluate", "--dataset", dataset, "--disp-dir", str(tmp_path / "none"), "--out", str(tmp_path / "m.json")]) == 2
    assert "disp_" in capsys.readouterr().err


def test_console_entry_points(tmp_path):
    for command in ([sys.executable, "-m", "regframe", "register", "--list-methods"],):
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "identity" in result.stdout.split()


def test_command_line_fit_prints_no_lightningcli_args_warning(tmp_path):
    """From the shell, LightningCLI reads sys.argv itself: no 'args parameter is intended...' warning."""
    command = [sys.executable, "-m", "regframe", "fit", "--config", str(EXPERIMENTS / "abdomen_cst.yaml"),
               "--config", str(EXPERIMENTS / "demo.yaml"), "--print_config"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 18" in result.stdout
    assert "args parameter" not in result.stderr
