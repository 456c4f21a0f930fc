"""Leave-one-pair-out keypoint registration on the LungCT_L2R pairs: CST and the CST paper's Table 3
baselines (metric supervision, synthetic rigid, synthetic random field), the same estimator, steps
and sampling for all (the shipped ``experiments/lung_*.yaml``).

Each job (method, held-out pair, seed) trains with the shipped config through ``RegframeCLI`` (what
``lightning fit --config ...`` runs, W&B off), then tests ``last.ckpt`` on the held-out pair (what
``lightning test --ckpt_path`` runs) and appends one JSON line to ``--out``: the test metrics, the
validation TRE at every validation (CST: every stage end), the wall time, and for CST the test TRE of
the random stage-0 network that made the first pseudo labels. Run one process per core with
``OMP_NUM_THREADS=1`` and split the jobs with ``--shard``:

    OMP_NUM_THREADS=1 python benchmarks/cst_points_loo.py --shard 0/2 --out runs/points_loo.jsonl &
    OMP_NUM_THREADS=1 python benchmarks/cst_points_loo.py --shard 1/2 --out runs/points_loo.jsonl
    python benchmarks/cst_points_loo.py --table runs/points_loo.jsonl

``--table`` prints per method the mean TRE over the three folds per seed, then mean ± sd over seeds,
SDlogJ and folding, and the paired difference CST − baseline over the (fold, seed) runs with a 95 %
t interval. Nothing is chosen on the held-out pair: every setting is the shipped config's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from regframe.cli import RegframeCLI
from regframe.point_metrics import landmark_tre

CONFIGS = {
    "cst": "experiments/lung_cst_points.yaml",
    "metric": "experiments/lung_points_metric_supervised.yaml",
    "rigid": "experiments/lung_points_synthetic_rigid.yaml",
    "field": "experiments/lung_points_synthetic_field.yaml",
}
FOLDS = ("0001", "0002", "0003")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


class ValidationHistory(pl.Callback):
    """Records ``val/tre_mm`` after every validation, with the epoch."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "val/tre_mm" in trainer.callback_metrics and not trainer.sanity_checking:
            self.history.append((trainer.current_epoch, float(trainer.callback_metrics["val/tre_mm"])))


@torch.no_grad()
def random_network_tre(model: Any, datamodule: Any) -> float:
    """Mean landmark TRE (mm) on the held-out pair of CST's random stage-0 estimator."""
    estimator = model.random_stage0_estimator().eval()
    batch = next(iter(datamodule.test_dataloader()))
    displacements = estimator(batch["fixed_points"], batch["moving_points"])[0]
    landmarks = batch["fixed_landmarks"][0], batch["moving_landmarks"][0]
    return float(landmark_tre(batch["fixed_points"][0], displacements, *landmarks, model.spline_smooth_weight).mean())


def run_job(method: str, fold: str, seed: int, root: str, run_dir: Path) -> dict[str, Any]:
    history = ValidationHistory()
    args = ["--config", CONFIGS[method], "--seed_everything", str(seed), "--data.init_args.root", root,
            "--data.init_args.test_pair", fold, "--data.init_args.seed", str(seed), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(run_dir / f"{method}_{fold}_{seed}")]
    cli = RegframeCLI(args=args, run=False)
    cli.trainer.callbacks.append(history)
    record: dict[str, Any] = {"method": method, "fold": fold, "seed": seed, "threads": torch.get_num_threads()}
    if method == "cst":
        cli.datamodule.setup("fit")
        record["random_network_tre_mm"] = random_network_tre(cli.model, cli.datamodule)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record["train_s"] = time.perf_counter() - start
    record["steps"] = cli.trainer.global_step
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="last", verbose=False)
    record.update({key.removeprefix("test/"): float(value) for key, value in tested.items()})
    record["val_history"] = history.history
    return record


def jobs(methods: list[str], folds: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """Seed-major order so that an interrupted sweep has whole seeds of every method."""
    return [(method, fold, seed) for seed in seeds for fold in folds for method in methods]


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def table(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs = {(r["method"], r["fold"], r["seed"]): r for r in records}
    methods = [m for m in CONFIGS if any(k[0] == m for k in runs)]
    seeds = sorted({k[2] for k in runs})
    complete = {m: [s for s in seeds if all((m, f, s) in runs for f in FOLDS)] for m in methods}
    lines = ["| method | TRE mm per seed (mean of 3 folds) | TRE mm mean ± sd | per fold (mean over seeds) "
             "| SDlogJ | fold % | train s (median) |", "|---|---|---|---|---|---|---|"]

    def row(name: str, key: str, method: str) -> str:
        per_seed = [statistics.fmean(runs[method, f, s][key] for f in FOLDS) for s in complete[method]]
        per_fold = [statistics.fmean(runs[method, f, s][key] for s in complete[method]) for f in FOLDS]
        sd = statistics.stdev(per_seed) if len(per_seed) > 1 else math.nan
        extra = "| | |"
        if key == "tre_mm":
            sdlogj = statistics.fmean(runs[method, f, s]["sdlogj"] for f in FOLDS for s in complete[method])
            folding = statistics.fmean(runs[method, f, s]["fold_pct"] for f in FOLDS for s in complete[method])
            seconds = statistics.median(runs[method, f, s]["train_s"] for f in FOLDS for s in complete[method])
            extra = f"| {sdlogj:.3f} | {folding:.2f} | {seconds:.0f}"
        return (f"| {name} | {' / '.join(f'{v:.2f}' for v in per_seed)} | {statistics.fmean(per_seed):.2f} ± {sd:.2f} "
                f"| {' / '.join(f'{v:.2f}' for v in per_fold)} {extra} |")

    first = methods[0]
    lines.append(row("initial", "initial_tre_mm", first).replace("± 0.00", "").replace("± nan", ""))
    if "cst" in methods:
        lines.append(row("random g + LBP (CST stage-0 labeller)", "random_network_tre_mm", "cst"))
    for method in methods:
        lines.append(row(method, "tre_mm", method))
    if "cst" in methods:
        lines += ["", "| CST − baseline (TRE mm, paired over fold × seed) | mean | 95 % CI | runs |", "|---|---|---|---|"]
        for method in methods:
            if method == "cst":
                continue
            keys = [(f, s) for f in FOLDS for s in seeds if ("cst", f, s) in runs and (method, f, s) in runs]
            differences = [runs["cst", f, s]["tre_mm"] - runs[method, f, s]["tre_mm"] for f, s in keys]
            mean, half = t_interval(differences)
            lines.append(f"| CST − {method} | {mean:+.2f} | [{mean - half:+.2f}, {mean + half:+.2f}] | {len(keys)} |")
        curves = defaultdict(list)
        for (method, fold, seed), record in runs.items():
            if method == "cst":
                for index, (_, tre) in enumerate(record["val_history"]):
                    curves[fold, index].append(tre)
        if curves:
            stages = sorted({index for _, index in curves})
            lines += ["", "| CST held-out TRE mm after stage | " + " | ".join(str(i + 1) for i in stages) + " |",
                      "|---|" + "---|" * len(stages)]
            for fold in FOLDS:
                values = [statistics.fmean(curves[fold, i]) if curves[fold, i] else math.nan for i in stages]
                lines.append(f"| pair {fold} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--folds", nargs="+", default=list(FOLDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", default="../shared/data/LungCT_L2R")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    parser.add_argument("--out", type=Path, default=Path("runs/points_loo.jsonl"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/points_loo"))
    parser.add_argument("--table", type=Path, help="print the table of a finished --out file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    index, count = (int(part) for part in args.shard.split("/"))
    done = set()
    if args.out.exists():
        done = {(r["method"], r["fold"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for number, (method, fold, seed) in enumerate(jobs(args.methods, args.folds, args.seeds)):
        if number % count != index or (method, fold, seed) in done:
            continue
        record = run_job(method, fold, seed, args.root, args.run_dir)
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"{method} {fold} seed {seed}: TRE {record['tre_mm']:.2f} mm (initial {record['initial_tre_mm']:.2f}) "
              f"in {record['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
