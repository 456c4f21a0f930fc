"""benchmarks/adacs_acdc.py: runs are the shipped configs, and the table's paired test is over pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import ttest_rel


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("adacs_acdc")


def test_every_run_is_the_shipped_config_with_its_overlays(bench, tmp_path: Path):
    for objective in bench.OBJECTIVES:
        for architecture in bench.ARCHITECTURES:
            args = bench.fit_arguments(objective, architecture, 2, tmp_path, tmp_path / "run")
            configs = [Path(args[i + 1]) for i, a in enumerate(args) if a == "--config"]
            assert configs[0].name == "acdc_adacs.yaml" and all(c.is_file() for c in configs)
            names = [c.name for c in configs[1:]]
            assert (f"acdc_{objective}.yaml" in names) == (objective != "adacs")
            assert (f"acdc_{architecture}.yaml" in names) == (architecture != "voxelmorph")
            assert args[args.index("--seed_everything") + 1] == "2" and "--trainer.max_epochs" not in args
    control = bench.fit_arguments("vanilla", "voxelmorph", 0, tmp_path, tmp_path / "run", max_epochs=8)
    assert control[-4:] == ["--trainer.max_epochs", "8", "--trainer.check_val_every_n_epoch", "8"]


def write_run(tmp_path: Path, manifest: Path, objective: str, seed: int, dice: list[float],
              architecture: str = "voxelmorph") -> None:
    run_dir = tmp_path / f"{architecture}_{objective}_s{seed}" / "regframe" / "abc"
    run_dir.mkdir(parents=True)
    records = [{"step": 10, "epoch": 0, "pair_id": f"p{i}", "dice": 0.0, "dice_per_organ": {}} for i in range(len(dice))]
    records += [{"step": 20, "epoch": 1, "pair_id": f"p{i}", "dice": d, "hd": 2.0, "dice_per_organ": {}}
                for i, d in enumerate(dice)]
    (run_dir / "val_pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with manifest.open("a") as handle:
        handle.write(json.dumps({"architecture": architecture, "objective": objective, "seed": seed,
                                 "run_dir": str(tmp_path / f"{architecture}_{objective}_s{seed}"), "train_s": 60.0,
                                 "returncode": 0}) + "\n")


def test_adacs_is_compared_with_the_best_other_objective_over_seed_averaged_pairs(bench, tmp_path: Path):
    manifest = tmp_path / "manifest.jsonl"
    write_run(tmp_path, manifest, "adacs", 0, [0.8, 0.7, 0.9, None, 0.6])
    write_run(tmp_path, manifest, "adacs", 1, [0.6, 0.7, 0.7, 0.5, 0.6])
    write_run(tmp_path, manifest, "vanilla", 0, [0.7, 0.6, 0.8, 0.5, 0.5])
    write_run(tmp_path, manifest, "vanilla", 1, [0.7, 0.6, 0.6, 0.5, 0.7])
    write_run(tmp_path, manifest, "nll", 0, [0.1] * 5)
    write_run(tmp_path, manifest, "vanilla_e8", 0, [0.99] * 5)  # a control, never the compared objective
    groups = bench.load_groups([manifest])
    # the last validation (step 20) is read, and its undefined Dice is left out of the run mean
    assert bench.run_mean(groups[("voxelmorph", "adacs")][0][1], "dice") == pytest.approx(0.75)
    result = bench.comparison(groups, "voxelmorph")
    adacs, vanilla = [0.7, 0.7, 0.8, 0.6], [0.7, 0.6, 0.7, 0.6]  # pair p3 is undefined in one AdaCS run
    expected = ttest_rel(adacs, vanilla)
    assert result["other"] == "vanilla" and result["pairs"] == 4 and result["left_out"] == 1
    assert result["difference"] == pytest.approx(0.05)
    assert result["seed_differences"] == [pytest.approx(0.75 - 0.62), pytest.approx(0.62 - 0.62)]
    low, high = result["seed_interval"]  # t interval of two differences: mean ± t(0.975, 1) · sd / √2
    assert (low + high) / 2 == pytest.approx(0.065) and (high - low) / 2 == pytest.approx(12.7062 * 0.065, rel=1e-4)
    assert result["t"] == pytest.approx(expected.statistic) and result["p"] == pytest.approx(expected.pvalue)
    low, high = expected.confidence_interval(0.95)
    assert (result["low"], result["high"]) == (pytest.approx(low), pytest.approx(high))
    assert math.isnan(bench.finite_mean([None, math.nan]))


def test_the_manifest_keeps_each_runs_curve_and_last_pairs_so_the_table_outlives_the_run_folder(bench, tmp_path: Path):
    import shutil

    manifest = tmp_path / "manifest.jsonl"
    write_run(tmp_path, manifest, "adacs", 0, [0.8, None, 0.6])
    summary = bench.validation_summary(tmp_path / "voxelmorph_adacs_s0")
    assert summary["val_dice_by_step"] == {"10": 0.0, "20": pytest.approx(0.7)}  # one mean Dice per validation
    assert summary["val_records"]["p1"]["dice"] is None and summary["val_records"]["p0"]["hd"] == 2.0
    row = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**row, **summary}) + "\n")
    shutil.rmtree(tmp_path / "voxelmorph_adacs_s0")
    records = bench.load_groups([manifest])[("voxelmorph", "adacs")][0][1]
    assert bench.run_mean(records, "dice") == pytest.approx(0.7) and math.isnan(records["p1"]["dice"])
    assert bench.validation_summary(tmp_path / "missing") == {}


def test_runs_the_manifest_holds_as_successful_are_not_trained_again(bench, tmp_path: Path, monkeypatch):
    from argparse import Namespace
    from types import SimpleNamespace

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps({"architecture": "voxelmorph", "objective": "vanilla", "seed": seed,
                                              "returncode": code}) for seed, code in ((0, 0), (2, 1))) + "\n")
    trained = []
    monkeypatch.setattr(bench.subprocess, "run", lambda command, **_: trained.append(command) or SimpleNamespace(returncode=0))
    args = Namespace(seeds=[0, 1, 2], architectures=["voxelmorph"], objectives=["vanilla"], max_epochs=None, label="",
                     set=[], tune_patients=0, out_dir=tmp_path, manifest=manifest, root=tmp_path)
    bench.run_jobs(args)
    seeds = [c[c.index("--seed_everything") + 1] for c in trained]
    assert seeds == ["1", "2"]  # seed 0 is in the manifest; seed 2 failed there and runs again


def test_a_tuning_run_sets_the_objective_value_and_validates_on_held_out_training_patients(bench, tmp_path: Path,
                                                                                          fake_acdc: Path):
    from argparse import Namespace

    from regframe.cli import RegframeCLI

    args = Namespace(set=["model.init_args.objective.init_args.c=5"], tune_patients=1)
    overrides = bench.run_overrides(args)
    assert overrides == ["--model.init_args.objective.init_args.c", "5", "--data.init_args.tune_patients", "1"]
    arguments = bench.fit_arguments("adareg", "voxelmorph", 0, fake_acdc, tmp_path / "run", overrides=overrides)
    cli = RegframeCLI(args=[*arguments[1:], "--trainer.logger", "false"], run=False)
    assert cli.model.objective.c == 5.0
    assert cli.datamodule.tune_patients == 1
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.run_overrides(Namespace(set=["c5"], tune_patients=0))


def test_the_table_reads_one_manifest_per_architecture_and_compares_within_each(bench, tmp_path: Path, capsys):
    voxelmorph, transmorph = tmp_path / "voxelmorph.jsonl", tmp_path / "transmorph.jsonl"
    write_run(tmp_path, voxelmorph, "adacs", 0, [0.8, 0.7, 0.9])
    write_run(tmp_path, voxelmorph, "vanilla", 0, [0.7, 0.6, 0.7])
    write_run(tmp_path, transmorph, "adacs", 0, [0.5, 0.5, 0.6], architecture="transmorph")
    write_run(tmp_path, transmorph, "nll", 0, [0.6, 0.7, 0.6], architecture="transmorph")
    groups = bench.load_groups([voxelmorph, transmorph])
    assert sorted(groups) == [("transmorph", "adacs"), ("transmorph", "nll"), ("voxelmorph", "adacs"),
                              ("voxelmorph", "vanilla")]
    assert bench.comparison(groups, "voxelmorph")["difference"] == pytest.approx(0.8 - 2 / 3)
    result = bench.comparison(groups, "transmorph")  # the other objective is chosen within the architecture
    assert result["other"] == "nll" and result["difference"] == pytest.approx(-0.1)
    bench.table([voxelmorph, transmorph])
    printed = capsys.readouterr().out
    assert "| voxelmorph | adacs − vanilla | +0.1333 |" in printed and "| transmorph | adacs − nll | -0.1000 |" in printed
