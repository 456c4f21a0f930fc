"""benchmarks/cst_test_time_ablation.py: the per-stage table averages slices into volume pairs,
and its trained − random differences are paired per run and per pair (known answers)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scipy import stats


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("cst_test_time_ablation")


def test_slice_ids_map_to_their_volume_pair(bench):
    assert bench.subject_pair("0016_s89_0017_s89") == "0016_0017"
    assert bench.subject_pair("0016_0017") == "0016_0017"


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_pairs_each_run_with_the_random_network(bench, tmp_path: Path):
    setting = "2 warps, no Adam"
    random = {"a": 0.40, "b": 0.50, "c": 0.30}          # volume pair -> Dice (two slices each, averaged)
    gains = {"s0": {"a": 0.10, "b": 0.02, "c": 0.06},  # run -> pair -> trained − random at stage 1
             "s1": {"a": 0.04, "b": 0.00, "c": 0.08}}
    rows = [{"run": "s0", "network": "identity", "stage": None, "setting": "identity", "pair_id": f"{p}_s1_{p}x_s1",
             "dice": 0.2} for p in random]
    for p, dice in random.items():  # the random network, logged once (by run s0); slices differ by ±0.02
        rows += [{"run": "s0", "network": "random", "stage": 0, "setting": setting, "pair_id": f"{p}_s{k}_{p}x_s{k}",
                  "dice": dice + delta} for k, delta in ((1, 0.02), (2, -0.02))]
    for run, per_pair in gains.items():
        for p, gain in per_pair.items():
            rows += [{"run": run, "network": "trained", "stage": 1, "setting": setting,
                      "pair_id": f"{p}_s{k}_{p}x_s{k}", "dice": random[p] + gain + delta}
                     for k, delta in ((1, 0.01), (2, -0.01))]
    write_rows(tmp_path / "rows.jsonl", rows)
    text = bench.table([tmp_path / "rows.jsonl"])

    per_run = [statistics.fmean(gains[r].values()) for r in ("s0", "s1")]  # 0.06, 0.04
    run_half = stats.t.ppf(0.975, 1) * statistics.stdev(per_run) / 2 ** 0.5
    per_pair = [statistics.fmean(gains[r][p] for r in gains) for p in random]  # 0.07, 0.01, 0.07
    pair_half = stats.t.ppf(0.975, 2) * statistics.stdev(per_pair) / 3 ** 0.5
    line = next(line for line in text.splitlines() if line.startswith(f"| 1 | {setting} |"))
    assert f"+0.0500 ± {statistics.stdev(per_run):.4f} (2 runs)" in line
    assert f"[{0.05 - run_half:+.4f}, {0.05 + run_half:+.4f}]" in line
    assert f"+0.0500 [{0.05 - pair_half:+.4f}, {0.05 + pair_half:+.4f}] (3 pairs)" in line
    stage0 = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    assert f"{statistics.fmean(random.values()):.4f} ± 0.0000" in stage0
    assert "identity: Dice 0.2000" in text


def test_compare_sets_the_final_stage_against_a_baseline_paired_over_pairs(bench, tmp_path: Path):
    """CST at its last stage (two runs) against a labelled baseline (one run): run means with their sd, and
    CST − baseline per volume pair after averaging each side over its runs; earlier stages are ignored."""
    setting = "1 warp, no Adam"
    cst = {"s0": {"a": 0.50, "b": 0.40, "c": 0.60}, "s1": {"a": 0.54, "b": 0.44, "c": 0.58}}
    baseline = {"a": 0.45, "b": 0.43, "c": 0.50}
    rows = []
    for run, per_pair in cst.items():
        for p, dice in per_pair.items():
            rows += [{"run": run, "network": "trained", "stage": 8, "setting": setting, "pair_id": f"{p}_s{k}_{p}x_s{k}",
                      "dice": dice + delta} for k, delta in ((1, 0.01), (2, -0.01))]
            rows.append({"run": run, "network": "trained", "stage": 7, "setting": setting, "pair_id": f"{p}_s1_{p}x_s1",
                         "dice": 0.0})
    rows += [{"run": "m0", "network": "MIND-supervised", "stage": None, "setting": setting, "pair_id": f"{p}_s1_{p}x_s1",
              "dice": dice} for p, dice in baseline.items()]
    write_rows(tmp_path / "cst.jsonl", rows[:-3])
    write_rows(tmp_path / "baseline.jsonl", rows[-3:])
    text = bench.compare([tmp_path / "cst.jsonl", tmp_path / "baseline.jsonl"])

    run_means = [statistics.fmean(cst[r].values()) for r in ("s0", "s1")]  # 0.50, 0.52
    cst_line = next(line for line in text.splitlines() if "| CST stage 8 |" in line)
    assert f"| 2 | {statistics.fmean(run_means):.4f} ± {statistics.stdev(run_means):.4f} |" in cst_line
    diffs = [statistics.fmean(cst[r][p] for r in cst) - baseline[p] for p in baseline]  # 0.07, -0.01, 0.09
    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / 3 ** 0.5
    line = next(line for line in text.splitlines() if "| MIND-supervised |" in line)
    mean = statistics.fmean(diffs)
    assert f"| 1 | {statistics.fmean(baseline.values()):.4f} |" in line
    assert f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (3 pairs)" in line
