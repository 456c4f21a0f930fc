"""``regframe compare`` on two real tiny runs: the shipped weakly supervised config fitted twice
(different seeds, W&B offline, 2 epochs of 3 steps, 6 phantom validation pairs; the estimator's last
layer initialised at std 0.5 instead of 1e-5, so that the two seeds' fields move labels differently)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from regframe.cli import finish_wandb_run, main
from regframe.compare import load_runs, paired_wilcoxon

REPO = Path(__file__).resolve().parents[2]
CONFIG = "abdomen_weakly_supervised.yaml"


def fit_tiny_run(root: Path, seed: int) -> Path:
    """Fit the shipped config with its test override on a tiny phantom; returns the run's own directory
    (``runs/<project>/<W&B run id>``)."""
    overlay = root / f"seed{seed}.yaml"
    overlay.write_text(yaml.safe_dump({
        "seed_everything": seed,
        "model": {"init_args": {"estimator": {"init_args": {"init_std": 0.5}}}},
        "data": {"init_args": {"root": str(root / "phantom"), "subjects": 8, "val_subjects": 4, "val_max_pairs": None}},
        "trainer": {"logger": {"init_args": {"save_dir": str(root / "runs")}}, "default_root_dir": str(root),
                    "max_epochs": 2, "limit_train_batches": 3, "check_val_every_n_epoch": 1,
                    "enable_progress_bar": False, "enable_checkpointing": False},
    }))
    before = set((root / "runs" / "regframe").glob("*"))
    finish_wandb_run()
    configs = [REPO / "experiments" / CONFIG, REPO / "tests" / "conf" / CONFIG, overlay]
    assert main(["fit", *[a for c in configs for a in ("--config", str(c))]]) == 0
    (run,) = set((root / "runs" / "regframe").glob("*")) - before
    return run


def wandb_files(run: Path) -> Path:
    """The W&B offline run folder's ``files/`` of a run directory named by its W&B id."""
    (folder,) = (run.parent.parent / "wandb").glob(f"offline-run-*-{run.name}")
    return folder / "files"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return fit_tiny_run(root, 1), fit_tiny_run(root, 2)


def final_dice(run: Path) -> dict[str, float]:
    """pair_id -> Dice of the last validation, read straight from the run's file."""
    records = [json.loads(line) for line in (run / "val_pairs.jsonl").read_text().splitlines()]
    last = max(r["step"] for r in records)
    return {r["pair_id"]: r["dice"] for r in records if r["step"] == last}


def test_runs_record_every_validation_pair(two_runs):
    for run in two_runs:
        records = [json.loads(line) for line in (run / "val_pairs.jsonl").read_text().splitlines()]
        assert sorted({r["step"] for r in records}) == [3, 6]  # two validations, no sanity check
        assert len(records) == 2 * 6
        assert all(0.0 <= r["dice"] <= 1.0 and r["dice_per_organ"] for r in records)
        assert "liver" in records[0]["dice_per_organ"]
        # the shipped config's validation panels: the first 2 pairs at each of the 2 validations
        images = (wandb_files(run) / "media" / "images" / "val_panels").glob("*.png")
        panels = {tuple(p.name.split("_")[:3]) for p in images}  # (fixed, moving, W&B step)
        assert sorted({(fixed, moving) for fixed, moving, _ in panels}) == [("0005", "0006"), ("0005", "0007")]
        assert len(panels) == 2 * 2


def test_html_report_names_both_runs(two_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert all(run.name in page for run in two_runs)  # the W&B run ids name the run folders
    assert page.count("data:image/png;base64,") == 1 and "Wilcoxon" in page and "liver" in page


def test_png_report(two_runs, tmp_path):
    out = tmp_path / "report.png"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregates_equal_the_per_pair_numbers(two_runs):
    for run in load_runs(list(two_runs)):
        dice = np.array(list(final_dice(run.path).values()))
        summary = run.summary()["dice"]
        assert summary["n"] == 6
        assert summary["mean"] == pytest.approx(dice.mean(), abs=1e-12)
        assert summary["std"] == pytest.approx(dice.std(ddof=1), abs=1e-12)
        assert summary["p30"] == pytest.approx(np.percentile(dice, 30), abs=1e-12)
        assert summary["low30_mean"] == pytest.approx(np.sort(dice)[:2].mean(), abs=1e-12)  # ceil(0.3 * 6) = 2
        steps, curve = run.curve()
        assert steps == [3, 6] and curve[-1] == pytest.approx(dice.mean(), abs=1e-12)


def test_wilcoxon_equals_scipy_on_common_pairs(two_runs):
    first, second = load_runs(list(two_runs))
    a, b = final_dice(first.path), final_dice(second.path)
    common = sorted(set(a) & set(b))
    assert len(common) == 6
    expected = wilcoxon([b[p] for p in common], [a[p] for p in common])
    result = paired_wilcoxon(first, second)
    assert result["n"] == 6
    assert result["p_value"] == pytest.approx(expected.pvalue, abs=1e-12)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert 0.0 < result["p_value"] <= 1.0


def test_identical_runs_have_no_test(two_runs):
    run = load_runs([two_runs[0]])[0]
    result = paired_wilcoxon(run, run)
    assert result["n"] == 6 and result["mean_difference"] == 0.0 and math.isnan(result["p_value"])


@pytest.mark.parametrize("problem", ["missing", "empty", "no_records", "bad_line", "suffix", "exists"])
def test_bad_input_is_one_line_exit_2(problem, two_runs, tmp_path, capsys):
    run = str(two_runs[0])
    out = tmp_path / "report.html"
    if problem == "missing":
        args = [run, str(tmp_path / "nowhere"), "--out", str(out)]
    elif problem == "empty":
        (tmp_path / "empty").mkdir()
        args = [run, str(tmp_path / "empty"), "--out", str(out)]
    elif problem == "no_records":
        (tmp_path / "blank").mkdir()
        (tmp_path / "blank" / "val_pairs.jsonl").write_text("")
        args = [str(tmp_path / "blank"), "--out", str(out)]
    elif problem == "bad_line":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "val_pairs.jsonl").write_text('{"step": 1, "pair_id": "a_b", "dice": 0.5}\n')
        args = [run, str(tmp_path / "broken"), "--out", str(out)]
    elif problem == "suffix":
        args = [run, "--out", str(tmp_path / "report.pdf")]
    else:
        out.write_text("earlier report")
        args = [run, "--out", str(out)]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regframe compare: error:") and "\n" not in err
    assert not out.exists() or out.read_text() == "earlier report"
