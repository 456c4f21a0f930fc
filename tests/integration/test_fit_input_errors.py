"""Bad input to ``regframe fit`` and ``regframe data`` ends with one line naming the file or option and
exit code 2, before any work starts: no W&B run, no run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from regframe.cli import finish_wandb_run, main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def only_error_line(stderr: str) -> str:
    """The single ``regframe ...: error:`` line of ``stderr`` (Lightning's info lines aside), no traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("regframe ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize(("config", "expected"), [
    ("abdomen_cst.yaml", "regframe fit: error: data/AbdomenCTCT/AbdomenCTCT_dataset.json: file not found (dataset_json)"),
    ("prostate_us_adacs.yaml", "regframe fit: error: ../shared/data/prostate_mr_us: folder not found (root: the "
                               "folder holding fixed_images/ and moving_images/)"),
])
def test_missing_data_path_fails_before_wandb_starts(config, expected, tmp_path, monkeypatch, capsys):
    """Run from a folder without ``../shared/data``: the shipped data paths do not exist there."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    finish_wandb_run()
    assert main(["fit", "--config", str(EXPERIMENTS / config)]) == 2
    assert only_error_line(capsys.readouterr().err) == expected
    assert list(tmp_path.iterdir()) == []  # no runs/, no wandb/, no config.yaml


def test_missing_checkpoint_to_resume_fails_before_wandb_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.json"
    data.write_text("{}")
    assert main(["fit", "--config", str(EXPERIMENTS / "abdomen_cst.yaml"), f"--data.init_args.dataset_json={data}",
                 "--ckpt_path=runs/old/last.ckpt"]) == 2
    assert only_error_line(capsys.readouterr().err) == "regframe fit: error: runs/old/last.ckpt: checkpoint not found (--ckpt_path)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


@pytest.mark.parametrize("subjects", [0, 1, 2])
def test_phantom_with_too_few_subjects_is_refused(subjects, tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["data", "phantom", "--out", str(out), "--subjects", str(subjects)]) == 2
    assert only_error_line(capsys.readouterr().err) == (
        f"regframe data: error: --subjects {subjects}: the phantom needs at least 3 subjects (its validation "
        "pairs use the last 3)")
    assert not out.exists()


def test_phantom_with_three_subjects_is_written(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path), "--subjects", "3", "--shape", "8", "8", "8"]) == 0
    assert len(list((tmp_path / "imagesTr").glob("*.nii.gz"))) == 3


def test_phantom_with_a_tiny_shape_is_refused(tmp_path, capsys):
    assert main(["data", "phantom", "--out", str(tmp_path / "p"), "--shape", "8", "3", "8"]) == 2
    assert only_error_line(capsys.readouterr().err) == (
        "regframe data: error: --shape 8 3 8: every size must be at least 4 voxels")
