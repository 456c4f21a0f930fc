"""Leave-one-pair-out keypoint registration on the LungCT_L2R pairs: CST and the CST paper's Table 3
baselines (metric supervision, synthetic rigid, synthetic random field, supervision by the training
pairs' keypoint correspondences), the same estimator, steps and sampling for all (the shipped
``experiments/lung_*.yaml``).

Each job (method, held-out pair, seed) trains with the shipped config through ``RegframeCLI`` (what
``lightning fit --config ...`` runs, W&B off), then tests ``last.ckpt`` on the held-out pair (what
``lightning test --ckpt_path`` runs) and appends one JSON line to ``--out``: the test metrics, the
validation TRE at every validation (CST: every stage end), the wall time, the held-out TRE of the
trained network alone (``tre_network_mm``) and with CST's label smoothing applied to its output
(``tre_smoothed_mm``: the control that gives every baseline CST's test-time refinement), and for CST
the TRE of the random stage-0 network that made the first pseudo labels. CST's smoothing weight is
chosen per fold on the training pairs (``LABEL_SMOOTHING``, from ``benchmarks/cst_points_stage0.py``). Run one process per core with
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
from regframe.estimators.point_refinement import RefinedPoints
from regframe.estimators.protocols import trained_network
from regframe.job_shards import append_record, pending_jobs, quiet_run_options
from regframe.paired_statistics import paired_interval
from regframe.point_metrics import landmark_tre

CONFIGS = {
    "cst": "experiments/lung_cst_points.yaml",
    "cst_plain": "experiments/lung_cst_points.yaml",  # ablation: no label smoothing (λ = 0), also at test
    "metric": "experiments/lung_points_metric_supervised.yaml",
    "rigid": "experiments/lung_points_synthetic_rigid.yaml",
    "field": "experiments/lung_points_synthetic_field.yaml",
    "supervised": "experiments/lung_points_keypoint_supervised.yaml",  # upper bound: true keypoint labels
}
FOLDS = ("0001", "0002", "0003")
# λ (mm³) of CST's label smoothing per held-out pair, chosen on the fold's two training pairs by the
# stage-0 label error (benchmarks/cst_points_stage0.py); baselines are also scored with it at test.
LABEL_SMOOTHING = {"0001": 1e6, "0002": 1e5, "0003": 3e5}
SMOOTHING_OPTION = "--model.init_args.estimator.init_args.smooth_weight"

class History(pl.Callback):
    """Records ``val/tre_mm`` after every validation and the training loss of every epoch (CST: the
    end-point error to its pseudo labels, ``train/epe_mm``; the others: ``train/loss``), with the epoch."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.losses: list[tuple[int, float]] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "val/tre_mm" in trainer.callback_metrics and not trainer.sanity_checking:
            self.history.append((trainer.current_epoch, float(trainer.callback_metrics["val/tre_mm"])))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for key in ("train/epe_mm", "train/loss_epoch"):
            if key in trainer.callback_metrics:
                self.losses.append((trainer.current_epoch, float(trainer.callback_metrics[key])))
                return


@torch.no_grad()
def held_out_tre(estimator: torch.nn.Module, datamodule: Any, spline_smooth_weight: float) -> float:
    """Mean landmark TRE (mm) of ``estimator`` on the held-out pair (its test batch)."""
    batch = next(iter(datamodule.test_dataloader()))
    displacements = estimator.eval()(batch["fixed_points"], batch["moving_points"])[0]
    landmarks = batch["fixed_landmarks"][0], batch["moving_landmarks"][0]
    return float(landmark_tre(batch["fixed_points"][0], displacements, *landmarks, spline_smooth_weight).mean())


def run_job(method: str, fold: str, seed: int, root: str, run_dir: Path) -> dict[str, Any]:
    history = History()
    args = ["--config", CONFIGS[method], "--seed_everything", str(seed), "--data.init_args.root", root,
            "--data.init_args.test_pair", fold, "--data.init_args.seed", str(seed),
            *quiet_run_options(run_dir / f"{method}_{fold}_{seed}")]
    smoothing = LABEL_SMOOTHING[fold]
    if method.startswith("cst"):
        args += [SMOOTHING_OPTION, str(smoothing if method == "cst" else 0.0)]
    cli = RegframeCLI(args=args, run=False)
    cli.trainer.callbacks.append(history)
    record: dict[str, Any] = {"method": method, "fold": fold, "seed": seed, "threads": torch.get_num_threads()}
    spline = cli.model.spline_smooth_weight
    if method.startswith("cst"):
        cli.datamodule.setup("fit")
        record["random_network_tre_mm"] = held_out_tre(cli.model.random_stage0_estimator(), cli.datamodule, spline)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record["train_s"] = time.perf_counter() - start
    record["steps"] = cli.trainer.global_step
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="last", verbose=False)
    record.update({key.removeprefix("test/"): float(value) for key, value in tested.items()})
    network = trained_network(cli.model.estimator)
    record["tre_network_mm"] = held_out_tre(network, cli.datamodule, spline)  # without any refinement
    record["tre_smoothed_mm"] = held_out_tre(RefinedPoints(network, 1, smoothing), cli.datamodule, spline)
    record["val_history"] = history.history
    record["loss_history"] = history.losses
    return record


def jobs(methods: list[str], folds: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """Seed-major order so that an interrupted sweep has whole seeds of every method."""
    return [(method, fold, seed) for seed in seeds for fold in folds for method in methods]


def table(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs = {(r["method"], r["fold"], r["seed"]): r for r in records}
    methods = [m for m in CONFIGS if any(k[0] == m for k in runs)]
    seeds = sorted({k[2] for k in runs})
    complete = {m: [s for s in seeds if all((m, f, s) in runs for f in FOLDS)] for m in methods}
    rows = [("initial", methods[0], "initial_tre_mm")]
    if "cst" in methods:
        rows.append(("random g + LBP (CST's stage-0 labeller)", "cst", "random_network_tre_mm"))
    for method in methods:
        rows.append((method, method, "tre_mm"))
        if method != "cst":
            rows.append((f"{method} + CST's smoothing at test", method, "tre_smoothed_mm"))
    lines = ["| method | TRE mm per seed (mean of 3 folds) | TRE mm mean ± sd | per held-out pair 0001/0002/0003 "
             "| SDlogJ | fold % | train s (median) |", "|---|---|---|---|---|---|---|"]
    for name, method, key in rows:
        seeds_done = complete[method]
        per_seed = [statistics.fmean(runs[method, f, s][key] for f in FOLDS) for s in seeds_done]
        per_fold = [statistics.fmean(runs[method, f, s][key] for s in seeds_done) for f in FOLDS]
        sd = f" ± {statistics.stdev(per_seed):.2f}" if len(per_seed) > 1 and key != "initial_tre_mm" else ""
        extra = "| | |"
        if key == "tre_mm":
            every = [runs[method, f, s] for f in FOLDS for s in seeds_done]
            extra = (f"| {statistics.fmean(r['sdlogj'] for r in every):.3f} "
                     f"| {statistics.fmean(r['fold_pct'] for r in every):.2f} "
                     f"| {statistics.median(r['train_s'] for r in every):.0f}")
        lines.append(f"| {name} | {' / '.join(f'{v:.2f}' for v in per_seed)} | {statistics.fmean(per_seed):.2f}{sd} "
                     f"| {' / '.join(f'{v:.2f}' for v in per_fold)} {extra} |")
    if "cst" in methods:
        lines += ["", "| paired difference (TRE mm, over fold × seed) | mean | 95 % CI | runs |", "|---|---|---|---|"]
        for name, method, key in rows[1:]:
            if method == "cst" and key == "tre_mm":
                continue
            keys = [(f, s) for f in FOLDS for s in seeds if ("cst", f, s) in runs and (method, f, s) in runs]
            differences = [runs["cst", f, s]["tre_mm"] - runs[method, f, s][key] for f, s in keys]
            mean, low, high = paired_interval(differences)
            lines.append(f"| CST − {name} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {len(keys)} |")
        for method in ("cst", "cst_plain"):
            curves = defaultdict(list)
            for (name, fold, seed), record in runs.items():
                if name == method:
                    for index, (_, tre) in enumerate(record["val_history"]):
                        curves[fold, index].append(tre)
            if not curves:
                continue
            stages = sorted({index for _, index in curves})
            lines += ["", f"| {method}: held-out TRE mm after stage | " + " | ".join(str(i + 1) for i in stages) + " |",
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
    job_list = jobs(args.methods, args.folds, args.seeds)
    done_key = lambda record: (record["method"], record["fold"], record["seed"])  # noqa: E731
    for method, fold, seed in pending_jobs(job_list, args.shard, args.out, done_key):
        record = run_job(method, fold, seed, args.root, args.run_dir)
        append_record(args.out, record)
        print(f"{method} {fold} seed {seed}: TRE {record['tre_mm']:.2f} mm (initial {record['initial_tre_mm']:.2f}) "
              f"in {record['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
