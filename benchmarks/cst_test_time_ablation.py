"""CST test-time ablation (paper, Table 1 lower part): Dice, SDlogJ and time per pair of a trained
model's estimator under {1, 2} warps x {no Adam, Adam} (ICE on), plus the identity, on the
validation pairs of the run's data module. ``--networks trained random`` also evaluates the
random stage-0 network (``CyclicalSelfTraining.random_stage0_estimator``, He init) under the same
settings, i.e. what the training stages bought over the random features. Several ``--ckpt`` (e.g.
the stage-end checkpoints of one run) are evaluated in turn, the random network once. 2D and 3D.
``--log FILE`` appends one JSON row per pair; ``--table FILE [FILE ...]`` summarises such rows of
several runs (seeds) per stage, with the trained − random difference per seed and over pairs.
``--label NAME`` logs a checkpoint that is not CST's (e.g. the MIND-supervised baseline, evaluated with
its own ``--config``) under that network name; ``--compare FILE [FILE ...]`` then sets CST's final stage
against each such network, setting by setting, paired over volume pairs.
Uses regframe's public API: run from the repository root with this checkout installed
(``pip install -e .``) or on ``PYTHONPATH=.``.

    python benchmarks/cst_test_time_ablation.py --ckpt runs/abdomen_cst_cpu/version_0/checkpoints/last.ckpt \
        --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_cpu.yaml [--max-pairs 15]
    python benchmarks/cst_test_time_ablation.py --ckpt runs/cst2d/seed0/version_0/checkpoints/epoch=*.ckpt \
        --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml --networks trained random \
        --settings "2 warps, no Adam" "2 warps + Adam" --run seed0 --log cst2d_ablation.jsonl
    python benchmarks/cst_test_time_ablation.py --table cst2d_ablation.jsonl
    python benchmarks/cst_test_time_ablation.py --ckpt runs/sup2d/mind_seed0/version_0/checkpoints/epoch=55.ckpt \
        --config experiments/abdomen_mind_supervised.yaml --config experiments/abdomen_supervised_2d.yaml \
        --label "MIND-supervised" --run seed0 --log baselines.jsonl
    python benchmarks/cst_test_time_ablation.py --compare cst2d_ablation.jsonl baselines.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from regframe.cli import RegframeCLI
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.protocols import trained_network, unwrapped
from regframe.metrics import pair_metrics
from regframe.paired_statistics import finite_mean, paired_interval

SETTINGS = {"1 warp, no Adam": dict(warps=1, adam=False), "1 warp + Adam": dict(warps=1, adam=True),
            "2 warps, no Adam": dict(warps=2, adam=False), "2 warps + Adam": dict(warps=2, adam=True)}


def variant(estimator: torch.nn.Module, warps: int, adam_iterations: int) -> torch.nn.Module:
    """The CST pipeline around ``estimator``'s trained network with ``warps`` and ``adam_iterations``,
    keeping the config's ICE iterations and the other IO settings."""
    ice = [m.iterations for m in unwrapped(estimator) if isinstance(m, InverseConsistent)]
    return cst_pipeline(trained_network(estimator), warps, ice[0] if ice else 0, estimator.io.with_iterations(adam_iterations))


def subject_pair(pair_id: str) -> str:
    """The volume pair a (possibly sliced) pair id comes from: ``"0016_s89_0017_s89"`` -> ``"0016_0017"``."""
    return re.sub(r"_s\d+", "", pair_id)


def evaluate(estimator: torch.nn.Module | None, batches: list[dict]) -> list[dict]:
    """Per-pair Dice, SDlogJ, folding and seconds of ``estimator`` (None: the identity)."""
    rows = []
    for batch in batches:
        start = time.perf_counter()
        if estimator is None:
            disp = torch.zeros(1, batch["fixed"].dim() - 2, *batch["fixed"].shape[2:])
        else:
            with torch.no_grad():
                disp = estimator(batch["fixed"], batch["moving"])
        seconds = time.perf_counter() - start
        m = pair_metrics(batch["fixed_label"], batch["moving_label"], disp, batch["spacing"][0].tolist(), hd95=False)
        rows.append({"pair_id": batch["pair_id"][0], "dice": m["dice"], "sdlogj": m["sdlogj_l2r"],
                     "fold_pct": m["fold_pct"], "seconds": seconds})
    return rows


def run_ablation(args: argparse.Namespace) -> None:
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    data.setup("validate")
    batches = list(data.val_dataloader())[: args.max_pairs]
    record(args, batches, "identity", None, None, "identity")
    if "random" in args.networks:
        random = model.random_stage0_estimator()
        for setting in args.settings:
            record(args, batches, "random", 0, random, setting)
    for path in args.ckpt if "trained" in args.networks else []:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        stage = model.schedule.stage_at(checkpoint["epoch"]).index + 1 if hasattr(model, "schedule") else None
        for setting in args.settings:
            record(args, batches, args.label, stage, model.estimator, setting, str(path))


def record(args: argparse.Namespace, batches: list[dict], network: str, stage: int | None,
           estimator: torch.nn.Module | None, setting: str, checkpoint: str | None = None) -> None:
    """Evaluate ``estimator`` under ``setting`` (None: the identity), print its mean, log its pairs."""
    chosen = None
    if estimator is not None:
        warps, adam = SETTINGS[setting]["warps"], SETTINGS[setting]["adam"]
        chosen = variant(estimator, warps, args.adam_iterations if adam else 0).eval()  # BatchNorm: running statistics
    rows = evaluate(chosen, batches)
    print(f"{args.run} {network} stage {stage} {setting}: Dice {finite_mean([r['dice'] for r in rows]):.4f} "
          f"fold {finite_mean([r['fold_pct'] for r in rows]):.3f} % "
          f"{statistics.median(r['seconds'] for r in rows):.2f} s/pair", flush=True)
    if args.log:
        with open(args.log, "a") as handle:
            for row in rows:
                handle.write(json.dumps({"run": args.run, "network": network, "stage": stage, "setting": setting,
                                         "checkpoint": checkpoint, "adam_iterations": args.adam_iterations,
                                         **row}) + "\n")


def read_rows(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def run_pair_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Run -> volume pair -> mean Dice of its (slice) rows."""
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[row["run"]][subject_pair(row["pair_id"])].append(row["dice"])
    return {run: {pair: finite_mean(values) for pair, values in pairs.items()} for run, pairs in cells.items()}


def run_averaged(runs: dict[str, dict[str, float]]) -> dict[str, float]:
    """Volume pair -> its Dice averaged over the runs (pairs that every run has)."""
    common = set.intersection(*map(set, runs.values())) if runs else set()
    return {pair: statistics.fmean(means[pair] for means in runs.values()) for pair in common}


def compare(paths: list[Path]) -> str:
    """CST's final stage (network ``trained``, its highest stage) against every other labelled network, per
    setting: Dice mean ± sd over runs, and CST − other over the volume pairs (each side averaged over its
    runs first; t interval over pairs). Runs of different methods are not paired, pairs are."""
    rows = read_rows(paths)
    final = max(row["stage"] for row in rows if row["network"] == "trained")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["network"] == "trained" and row["stage"] == final:
            groups[(f"CST stage {final}", row["setting"])].append(row)
        elif row["network"] not in ("identity", "random", "trained"):
            groups[(row["network"], row["setting"])].append(row)
    lines = ["| setting | network | runs | Dice (mean ± sd over runs) | CST − this network (95 % CI over pairs) |",
             "|---|---|---|---|---|"]
    for setting in sorted({setting for _, setting in groups}):
        cst_pairs = run_averaged(run_pair_means(groups.get((f"CST stage {final}", setting), [])))
        for network in sorted({name for name, s in groups if s == setting}):
            runs = run_pair_means(groups[(network, setting)])
            means = [finite_mean(list(pairs.values())) for pairs in runs.values()]
            spread = f" ± {statistics.stdev(means):.4f}" if len(means) > 1 else ""
            difference = ""
            if not network.startswith("CST") and cst_pairs:
                other = run_averaged(runs)
                diffs = [cst_pairs[p] - other[p] for p in cst_pairs if p in other and math.isfinite(cst_pairs[p] - other[p])]
                mean, low, high = paired_interval(diffs)
                difference = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] ({len(diffs)} pairs)"
            lines.append(f"| {setting} | {network} | {len(means)} | {statistics.fmean(means):.4f}{spread} | {difference} |")
    return "\n".join(lines)


def table(paths: list[Path]) -> str:
    """Per stage and setting: mean Dice over pairs, mean ± sd over runs; then each trained stage
    minus the random network (stage 0) in the same setting: per-run differences (mean ± sd, t interval
    over runs) and the run-averaged difference per volume pair (t interval over pairs)."""
    rows = [row for row in read_rows(paths) if row["network"] in ("identity", "random", "trained")]
    by_cell: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["network"] == "identity":
            continue
        stage = 0 if row["network"] == "random" else row["stage"]
        by_cell[(stage, row["setting"])][row["run"]][subject_pair(row["pair_id"])].append(row["dice"])
    runs = sorted({row["run"] for row in rows if row["network"] == "trained"})
    settings = sorted({setting for _, setting in by_cell})
    identity = [r["dice"] for r in rows if r["network"] == "identity"]
    lines = [f"identity: Dice {finite_mean(identity):.4f}" if identity else "", "",
             "| stage | " + " | ".join(f"{s}: Dice (mean ± sd over runs)" for s in settings) + " |",
             "|---|" + "---|" * len(settings)]
    stages = sorted({stage for stage, _ in by_cell})

    def pair_means(stage: int, setting: str, run: str) -> dict[str, float]:
        cell = by_cell[(stage, setting)]
        pairs = cell.get(run) or next(iter(cell.values()))  # the random network: evaluated once, any run
        return {pair: finite_mean(values) for pair, values in pairs.items()}

    for stage in stages:
        cells = []
        for setting in settings:
            means = [finite_mean(list(pair_means(stage, setting, run).values())) for run in runs
                     if (stage, setting) in by_cell]
            cells.append(f"{statistics.fmean(means):.4f} ± {statistics.stdev(means) if len(means) > 1 else 0:.4f}"
                         if means else "")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "| stage − random (stage 0) | setting | per run: mean ± sd | 95 % CI over runs | 95 % CI over pairs (run mean) |",
              "|---|---|---|---|---|"]
    for stage in stages[1:]:
        for setting in settings:
            if (0, setting) not in by_cell or (stage, setting) not in by_cell:
                continue
            per_run, per_pair = [], defaultdict(list)
            for run in runs:
                trained, random = pair_means(stage, setting, run), pair_means(0, setting, run)
                common = [p for p in trained if p in random and math.isfinite(trained[p] - random[p])]
                per_run.append(statistics.fmean(trained[p] for p in common) - statistics.fmean(random[p] for p in common))
                for p in common:
                    per_pair[p].append(trained[p] - random[p])
            run_mean, run_low, run_high = paired_interval(per_run)
            pair_mean, pair_low, pair_high = paired_interval([statistics.fmean(v) for v in per_pair.values()])
            sd = statistics.stdev(per_run) if len(per_run) > 1 else 0.0
            lines.append(f"| {stage} | {setting} | {run_mean:+.4f} ± {sd:.4f} ({len(per_run)} runs) | "
                         f"[{run_low:+.4f}, {run_high:+.4f}] | {pair_mean:+.4f} [{pair_low:+.4f}, {pair_high:+.4f}] "
                         f"({len(per_pair)} pairs) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", nargs="+", help="checkpoints of one run (e.g. its stage ends)")
    parser.add_argument("--config", action="append")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--adam-iterations", type=int, default=50)
    parser.add_argument("--networks", nargs="+", choices=("trained", "random"), default=["trained"],
                        help="feature networks to evaluate: the checkpoints' and/or the random stage-0 one")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--run", default="run", help="name of this run in the log (e.g. its seed)")
    parser.add_argument("--log", help="append one JSON row per pair here")
    parser.add_argument("--label", default="trained",
                        help="network name of the --ckpt rows in the log (a baseline's name; default: CST's 'trained')")
    parser.add_argument("--table", nargs="+", type=Path, help="summarise logged rows instead of running")
    parser.add_argument("--compare", nargs="+", type=Path, help="CST's final stage against the labelled networks")
    args = parser.parse_args()
    if args.table or args.compare:
        print(table(args.table) if args.table else compare(args.compare))
        return
    if not args.config or ("trained" in args.networks and not args.ckpt):
        parser.error("--config is required, and --ckpt with --networks trained")
    for path in args.ckpt or []:
        if not Path(path).is_file():
            parser.error(f"--ckpt {path}: no such file")
    run_ablation(args)


if __name__ == "__main__":
    main()
