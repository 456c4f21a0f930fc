"""JRSS's screening threshold τ on LPBA40, chosen on subjects that are not test subjects (the paper's
Dice-against-τ sweep over [0.5, 0.8]).

For each seed the two pre-training stages (Mono-Seg 30 epochs, Mono-Reg 15), which never read τ, run
once with ``experiments/lpba40_jrss.yaml``; every τ then resumes that checkpoint (``fit --ckpt_path``) for
the joint stage (3 × (5 registration + 1 student) epochs), so the τ values of a seed differ only in the
joint stage. Each finished job scores, on the validation subjects (S39, S40) and on the training subjects
that were *not* labelled in the run (their labels are read here only, never in training):
- the final segmenter (the EMA teacher): mean Dice over the structures present, the share of background
  and foreground voxels above τ (what the screen keeps) and the accuracy of the kept voxels;
- the registration network: Dice of the warped moving labels over the 56 structures on the validation
  pairs (S39 ↔ S40, both directions) and on a ring of unlabelled training pairs (subject i → i + 1).
One JSON line per job to ``--out``. Run one process per core; a seed's pre-training is claimed by the
first process that needs it (lock file), the other waits for its checkpoint:

    OMP_NUM_THREADS=1 python benchmarks/jrss_lpba40_tau_sweep.py --seeds 0 2 --taus 0.5 0.6 0.7 0.8 &
    OMP_NUM_THREADS=1 python benchmarks/jrss_lpba40_tau_sweep.py --seeds 1 2 --taus 0.8 0.7 0.6 0.5
    python benchmarks/jrss_lpba40_tau_sweep.py --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from jrss_lpba40_mono_seg_probe import teacher_statistics

from regframe.cli import RegframeCLI
from regframe.job_shards import append_record, claim, pending_jobs, quiet_run_options
from regframe.metrics import pair_metrics
from regframe.paired_statistics import paired_interval

CONFIG = "experiments/lpba40_jrss.yaml"
PRETRAIN_EPOCHS = 45          # the config's seg_pretrain_epochs + reg_pretrain_epochs
EXTRA: list[str] = []          # --extra: options appended to every run (e.g. a smoke run's limit_train_batches)


def cli_args(seed: int, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", CONFIG, "--seed_everything", str(seed), "--model.init_args.labelled_seed", str(seed),
            *quiet_run_options(run_dir), *extra, *EXTRA]


def pretrained_checkpoint(seed: int, run_dir: Path, poll_s: float = 30.0) -> Path:
    """The checkpoint after the two pre-training stages of ``seed``: trained here if no other process
    claimed it (``final_segmenter=student``: the EMA teacher does not exist before the joint stage),
    else waited for."""
    folder = run_dir / f"pretrain_{seed}"
    done = folder / "pretrained.ckpt"
    if not claim(folder):
        while not done.exists():
            time.sleep(poll_s)
        return done
    cli = RegframeCLI(args=cli_args(seed, folder, "--trainer.max_epochs", str(PRETRAIN_EPOCHS),
                                    "--model.init_args.final_segmenter", "student"), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    partial = folder / "pretrained.part"
    cli.trainer.save_checkpoint(partial)
    partial.rename(done)
    return done


@torch.no_grad()
def registration_dice(estimator: torch.nn.Module, subjects: list[dict], pairs: list[tuple[int, int]]) -> float:
    """Mean Dice (56 structures) of the moving labels warped onto the fixed image over ``pairs``."""
    estimator.eval()
    scores = []
    for fixed, moving in pairs:
        f, m = subjects[fixed], subjects[moving]
        field = estimator(f["image"][None].float(), m["image"][None].float())
        metrics = pair_metrics(f["label"][None], m["label"][None], field, f["spacing"].tolist(), hd95=False)
        scores.append(metrics["dice"])
    return statistics.fmean(scores)


def run_tau(seed: int, tau: float, run_dir: Path) -> dict[str, Any]:
    checkpoint = pretrained_checkpoint(seed, run_dir)
    cli = RegframeCLI(args=cli_args(seed, run_dir / f"tau{tau}_{seed}", "--model.init_args.tau", str(tau)), run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(checkpoint))
    record: dict[str, Any] = {"seed": seed, "tau": tau, "joint_train_s": time.perf_counter() - start,
                              "threads": torch.get_num_threads(), "steps": cli.trainer.global_step,
                              "labelled_ids": list(cli.model.hparams["labelled_ids"])}
    data = cli.datamodule
    labelled = set(record["labelled_ids"])
    unlabelled = [s for s in data.train_subjects if s["id"] not in labelled]
    segmenter = cli.model.segmenter.eval()
    record["unlabelled_training"] = teacher_statistics(segmenter, unlabelled, tau)
    record["validation"] = teacher_statistics(segmenter, data.val_subjects, tau)
    ring = [(i, (i + 1) % len(unlabelled)) for i in range(len(unlabelled))]
    record["reg_dice_unlabelled_training"] = registration_dice(cli.model.estimator, unlabelled, ring)
    record["reg_dice_validation"] = registration_dice(cli.model.estimator, data.val_subjects, data.val_pairs)
    return record


def table(path: Path) -> str:
    """Mean ± sd over seeds per τ, and each τ minus the config's τ = 0.7 per seed (mean, 95 % t interval)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    columns = {"seg Dice, unlabelled training": lambda r: r["unlabelled_training"]["dice"],
               "seg Dice, validation": lambda r: r["validation"]["dice"],
               "kept, background": lambda r: r["unlabelled_training"]["background_kept"],
               "kept, foreground": lambda r: r["unlabelled_training"]["foreground_kept"],
               "kept accuracy": lambda r: r["unlabelled_training"]["kept_accuracy"],
               "reg Dice, unlabelled training": lambda r: r["reg_dice_unlabelled_training"],
               "reg Dice, validation": lambda r: r["reg_dice_validation"]}
    by_tau: dict[float, dict[int, dict]] = {}
    for record in records:
        by_tau.setdefault(record["tau"], {})[record["seed"]] = record
    lines = ["| τ | seeds | " + " | ".join(columns) + " | joint min |", "|---" * (len(columns) + 3) + "|"]
    for tau, runs in sorted(by_tau.items()):
        cells = []
        for value in (*columns.values(), lambda r: r["joint_train_s"] / 60):
            values = [value(r) for r in runs.values()]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.4f}{spread}")
        lines.append(f"| {tau} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "| τ − 0.7 (per seed) | metric | differences | mean | 95 % CI |", "|---|---|---|---|---|"]
    reference = by_tau.get(0.7, {})
    for tau, runs in sorted(by_tau.items()):
        seeds = sorted(set(runs) & set(reference))
        if tau == 0.7 or len(seeds) < 2:
            continue
        for name in ("seg Dice, unlabelled training", "seg Dice, validation", "reg Dice, unlabelled training"):
            differences = [columns[name](runs[s]) - columns[name](reference[s]) for s in seeds]
            mean, low, high = paired_interval(differences)
            lines.append(f"| {tau} − 0.7 | {name} | {' / '.join(f'{d:+.4f}' for d in differences)} | {mean:+.4f} "
                         f"| [{low:+.4f}, {high:+.4f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--taus", nargs="+", type=float, default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--out", type=Path, default=Path("runs/jrss_lpba40_tau.jsonl"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/jrss_lpba40_tau"))
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    parser.add_argument("--extra", default="", help="CLI options appended to every run, one string")
    args = parser.parse_args()
    EXTRA.extend(args.extra.split())
    if args.table:
        print(table(args.out))
        return
    jobs = [(seed, tau) for seed in args.seeds for tau in args.taus]
    for seed, tau in pending_jobs(jobs, "0/1", args.out, lambda r: (r["seed"], r["tau"])):
        if not claim(args.run_dir / f"tau{tau}_{seed}"):   # another process runs it
            continue
        record = run_tau(seed, tau, args.run_dir)
        append_record(args.out, record)
        print(json.dumps({k: v for k, v in record.items() if k != "labelled_ids"}), flush=True)


if __name__ == "__main__":
    main()
