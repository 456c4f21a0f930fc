"""Seconds per training step of each JRSS stage at a given thread count, and the training time of a
config's whole stage plan projected from them.

Each config runs once per thread count with every stage shortened to one epoch of ``--steps`` steps
(no validation); a callback times every optimisation step by stage. The projection is
``sum over stages of (epochs x limit_train_batches of the full config) x median seconds per step``
and leaves out validation and the final test (seconds on these configs). Configs and thread counts
are interleaved in one process, so they share the machine's state; run it with the machine idle::

    python benchmarks/jrss_step_time.py --threads 1 2 --out benchmarks/results/jrss_step_time.jsonl \\
        --config experiments/prostate_jrss.yaml --config experiments/lpba40_jrss.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from regframe.cli import RegframeCLI
from regframe.job_shards import append_record, quiet_run_options

SHORT_PLAN = ["--model.init_args.seg_pretrain_epochs", "1", "--model.init_args.reg_pretrain_epochs", "1",
              "--model.init_args.rounds", "1", "--model.init_args.reg_epochs_per_round", "1",
              "--model.init_args.seg_epochs_per_round", "1", "--trainer.max_epochs", "4",
              "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]


class StepTimer(pl.Callback):
    """Wall seconds of every training step, by the module's ``stage``."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds[pl_module.stage].append(time.perf_counter() - self._start)


def full_plan(config: str) -> tuple[dict[str, int], int]:
    """Epochs per stage name of ``config``'s model, and its ``limit_train_batches`` (steps per epoch)."""
    cli = RegframeCLI(args=["--config", config, "--trainer.logger", "false"], run=False)
    epochs: dict[str, int] = defaultdict(int)
    for stage in cli.model.schedule.stages:
        epochs[stage.name] += stage.epochs
    return dict(epochs), int(cli.trainer.limit_train_batches)


def measure(config: str, threads: int, steps: int, root: Path) -> dict[str, Any]:
    """Median seconds per step of each stage (the first step of each stage left out as warm-up) with
    ``threads`` threads, and the projected training minutes of ``config``'s full plan."""
    torch.set_num_threads(threads)
    epochs, steps_per_epoch = full_plan(config)
    args = ["--config", config, *SHORT_PLAN, "--trainer.limit_train_batches", str(steps + 1),
            *quiet_run_options(root)]
    cli = RegframeCLI(args=args, run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    per_step = {name: statistics.median(seconds[1:]) for name, seconds in timer.seconds.items()}
    projected = sum(epochs[name] * steps_per_epoch * per_step[name] for name in epochs)
    return {"config": config, "threads": threads, "steps_timed": steps, "seconds_per_step": per_step,
            "plan_epochs": epochs, "steps_per_epoch": steps_per_epoch, "projected_train_min": projected / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="a JRSS config (repeat for several)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage (after one warm-up step)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/jrss_step_time"))
    args = parser.parse_args()
    for config in args.config:
        for threads in args.threads:
            record = measure(config, threads, args.steps, args.run_dir)
            append_record(args.out, record)
            steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in record["seconds_per_step"].items())
            print(f"{config} {threads} thread(s): s/step {steps}; projected {record['projected_train_min']:.1f} min",
                  flush=True)


if __name__ == "__main__":
    main()
