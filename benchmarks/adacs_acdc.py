"""AdaCS and its baselines on ACDC with the paper's protocol, through the shipped configs.

Each run is ``regframe fit --config experiments/acdc_adacs.yaml [--config experiments/acdc_<objective>.yaml]
[--config experiments/acdc_<architecture>.yaml] --seed_everything SEED``: exactly the shipped CPU
configuration, the training seed the only change (the patient split stays the data module's seed 0,
so every run is scored on the same validation pairs). The run's own per-pair validation records
(``val_pairs.jsonl``, :mod:`regframe.pair_records`) are read at its last validation; one JSON line per
run (objective, architecture, seed, run folder, wall time) goes to ``--manifest``.

``--identity`` records the unregistered pairs the same way (zero displacement), ``--table`` prints:
mean ± sd over seeds of the per-run means (Dice, HD and ASD in pixels and mm, SDlogJ, folding), and
per architecture the paired t-test (``scipy.stats.ttest_rel``, two-sided) of AdaCS against the
other objective with the highest mean Dice, over the validation pairs (each pair's Dice averaged over
seeds; pairs whose Dice is undefined in any run are left out and counted).

    OMP_NUM_THREADS=1 python benchmarks/adacs_acdc.py --seeds 0 1 2 &   # one worker per core: each
    OMP_NUM_THREADS=1 python benchmarks/adacs_acdc.py --seeds 0 1 2     # claims the next unclaimed run
    python benchmarks/adacs_acdc.py --identity
    python benchmarks/adacs_acdc.py --table
    python benchmarks/adacs_acdc.py --score-stats        # what the AdaCS runs' scorers learned
    python benchmarks/adacs_acdc.py --curves             # each run's validation Dice at every validation

Each manifest row keeps the run's validation curve and the per-pair metrics of its last validation, so a
manifest under ``benchmarks/results`` (``--manifest``) tables its runs after the run folders are gone.

Tuning an objective's own settings without the validation patients: ``--tune-patients K`` validates on K
held-out training patients (``ACDCDataModule(tune_patients=K)``; the 20 validation patients are not read),
``--set KEY=VALUE`` changes a config value and ``--label`` names the row (``OBJECTIVE@LABEL``), e.g.

    OMP_NUM_THREADS=1 python benchmarks/adacs_acdc.py --objectives adareg --seeds 0 --tune-patients 10 \
        --set model.init_args.objective.init_args.c=5 --label c5 --out-dir runs/acdc_tuning
    python benchmarks/adacs_acdc.py --table --out-dir runs/acdc_tuning

On a folder holding the ACDC test patients in ``ROOT/testing`` (not in ``../shared``), the same runs
are evaluated by ``regframe test --ckpt_path`` with their last checkpoint, and tabled the same way:

    OMP_NUM_THREADS=2 python benchmarks/adacs_acdc.py --test --root ROOT
    OMP_NUM_THREADS=2 python benchmarks/adacs_acdc.py --identity --split test --root ROOT
    python benchmarks/adacs_acdc.py --table --split test
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scipy.stats import ttest_rel

from regframe.pair_records import read_pair_records, records_filename
from regframe.paired_statistics import finite_mean, paired_interval

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", ROOT / ".." / "shared" / "data")) / "ACDC"
OBJECTIVES = ("vanilla", "nll", "beta_nll", "adareg", "adaframe", "adacs", "adareg_source")
ARCHITECTURES = ("voxelmorph", "transmorph", "diffusemorph")
METRICS = ("dice", "hd", "asd", "hd_mm", "asd_mm", "sdlogj", "fold_pct")
IDENTITY = "identity"


def fit_arguments(objective: str, architecture: str, seed: int, root: Path, run_dir: Path,
                  max_epochs: int | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """``regframe fit`` arguments of one run: the shipped configs, the seed, the data root, the run folder,
    for a control of a different length ``max_epochs`` (validated once, at the end), then ``overrides``
    (CLI options, e.g. a tuning run's objective setting and ``--data.init_args.tune_patients``)."""
    configs = [EXPERIMENTS / "acdc_adacs.yaml"]
    if objective != "adacs":
        configs.append(EXPERIMENTS / f"acdc_{objective}.yaml")
    if architecture != "voxelmorph":
        configs.append(EXPERIMENTS / f"acdc_{architecture}.yaml")
    return ["fit", *itertools.chain.from_iterable(("--config", str(c)) for c in configs),
            "--seed_everything", str(seed), "--data.init_args.root", str(root),
            "--trainer.logger.init_args.save_dir", str(run_dir),
            "--trainer.logger.init_args.name", run_dir.name, "--trainer.enable_progress_bar", "false",
            *(["--trainer.max_epochs", str(max_epochs), "--trainer.check_val_every_n_epoch", str(max_epochs)]
              if max_epochs else []), *overrides]


def run_overrides(args: argparse.Namespace) -> list[str]:
    """CLI options of ``--set KEY=VALUE`` (``--KEY VALUE``) and ``--tune-patients K``."""
    overrides = []
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise SystemExit(f"--set {setting!r}: expected KEY=VALUE, e.g. model.init_args.objective.init_args.c=5")
        overrides += [f"--{key}", value]
    if args.tune_patients:
        overrides += ["--data.init_args.tune_patients", str(args.tune_patients)]
    return overrides


def run_jobs(args: argparse.Namespace) -> None:
    """Train the (seed, architecture, objective) runs in that order, each claimed by creating its run
    folder, so that several workers share the list; a run whose folder exists is skipped (delete the
    folder of a failed run to repeat it); a run the manifest already holds as successful is skipped too,
    so a manifest kept under ``benchmarks/results`` resumes after the run folders are gone."""
    overrides = run_overrides(args)
    done = {(row["architecture"], row["objective"], row["seed"]) for row in manifest_rows(args.manifest)
            if row["returncode"] == 0}
    for seed, architecture, objective in itertools.product(args.seeds, args.architectures, args.objectives):
        label = f"{objective}_e{args.max_epochs}" if args.max_epochs else objective
        label += f"@{args.label}" if args.label else ""
        run_dir = args.out_dir / f"{architecture}_{label.replace('@', '_')}_s{seed}"
        if (architecture, label, seed) in done:
            continue
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        command = [sys.executable, "-m", "regframe", *fit_arguments(objective, architecture, seed, args.root, run_dir,
                                                                     args.max_epochs, overrides)]
        start = time.perf_counter()
        with (args.out_dir / f"{run_dir.name}.log").open("w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        row = {"architecture": architecture, "objective": label, "seed": seed, "run_dir": str(run_dir),
               "train_s": round(time.perf_counter() - start, 1), "returncode": code,
               "threads": os.environ.get("OMP_NUM_THREADS"), "overrides": overrides,
               **(validation_summary(run_dir) if code == 0 else {})}
        with args.manifest.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def record_identity(args: argparse.Namespace) -> None:
    """Per-pair metrics of the unregistered pairs of ``args.split`` (zero displacement), as run records."""
    import torch

    from data_modules.acdc import ACDCDataModule
    from regframe.metrics import pair_metrics

    data = ACDCDataModule(root=str(args.root))
    data.setup("test" if args.split == "test" else "fit")
    run_dir = args.out_dir / IDENTITY
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for batch in data.test_dataloader() if args.split == "test" else data.val_dataloader():
        for i in range(batch["fixed"].shape[0]):
            disp = torch.zeros(1, 2, *batch["fixed"].shape[2:])
            m = pair_metrics(batch["fixed_label"][i:i + 1], batch["moving_label"][i:i + 1], disp,
                             batch["spacing"][i].tolist(), labels=[2], hd95=False, surface_distances=True)
            record = {"step": 0, "epoch": 0, "pair_id": batch["pair_id"][i], "dice": m["dice"],
                      "sdlogj": m["sdlogj_l2r"], "fold_pct": m["fold_pct"], "dice_per_organ": {},
                      **{key: m[key] for key in ("hd", "asd", "hd_mm", "asd_mm")}}
            lines.append(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                     for k, v in record.items()}))
    (run_dir / records_filename(args.split)).write_text("\n".join(lines) + "\n")
    if not any(row["objective"] == IDENTITY for row in manifest_rows(args.manifest)):
        with args.manifest.open("a") as handle:
            handle.write(json.dumps({"architecture": IDENTITY, "objective": IDENTITY, "seed": 0,
                                     "run_dir": str(run_dir), "train_s": 0.0, "returncode": 0,
                                     **(validation_summary(run_dir) if args.split == "val" else {})}) + "\n")
    print(f"{len(lines)} {args.split} pairs recorded in {run_dir}")


def score_statistics(args: argparse.Namespace) -> None:
    """What each AdaCS run's scorer learned, on the validation pairs: mean score, the share of pixels
    below 0.9 and 0.5, the mean score on the ES myocardium, its correlation with the squared residual of
    the trained estimator, and m_T."""
    import torch

    from data_modules.acdc import ACDCDataModule
    from regframe.methods.base import RegistrationModule
    from regframe.register import read_method_checkpoint, rebuild_method
    from regframe.spatial import warp

    data = ACDCDataModule(root=str(args.root))
    data.setup("fit")
    for row in manifest_rows(args.manifest):
        if row["objective"] != "adacs" or row["returncode"] != 0:
            continue
        checkpoint = last_checkpoint(Path(row["run_dir"]))
        module = rebuild_method(checkpoint, read_method_checkpoint(checkpoint, (RegistrationModule,))[0]).eval()
        scores, residuals, myocardium = [], [], []
        with torch.no_grad():
            for batch in data.val_dataloader():
                warped = warp(batch["moving"], module.estimator(batch["fixed"], batch["moving"]))
                scores.append(module.objective.weight_net(batch["fixed"]).flatten())
                residuals.append((batch["fixed"] - warped).pow(2).flatten())
                myocardium.append((batch["fixed_label"] == 2).flatten())
        score, r2, myo = torch.cat(scores), torch.cat(residuals), torch.cat(myocardium)
        print(f"{row['architecture']} seed {row['seed']}: score mean {score.mean():.3f}, "
              f"< 0.9 {(score < 0.9).float().mean():.3f}, < 0.5 {(score < 0.5).float().mean():.4f}, "
              f"myocardium {score[myo].mean():.3f}, corr(score, r²) {torch.corrcoef(torch.stack([score, r2]))[0, 1]:.3f}, "
              f"m_T {module.objective.residual_momentum.item():.4f}", flush=True)


def last_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint ``regframe fit`` wrote for the run in ``run_dir``."""
    checkpoints = sorted((run_dir / "regframe").rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise SystemExit(f"{run_dir}: no checkpoint")
    return checkpoints[-1]


def manifest_rows(manifest: Path) -> list[dict]:
    """The rows of ``manifest`` (none when it does not exist)."""
    if not manifest.is_file():
        return []
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def evaluate_on_testing(args: argparse.Namespace) -> None:
    """``regframe test`` of every successful run's last checkpoint on ``args.root/testing``; its records
    (``test_pairs.jsonl``) go to ``RUN/test``, which is replaced."""
    for row in manifest_rows(args.manifest):
        if row["returncode"] != 0 or row["objective"] == IDENTITY:
            continue
        run_dir = Path(row["run_dir"])
        objective = re.sub(r"_e\d+$", "", row["objective"].partition("@")[0])
        test_dir = run_dir / "test"
        shutil.rmtree(test_dir, ignore_errors=True)
        overrides = [o for o in row.get("overrides", []) if "tune_patients" not in o]
        arguments = fit_arguments(objective, row["architecture"], row["seed"], args.root, test_dir, overrides=overrides)
        command = [sys.executable, "-m", "regframe", "test", *arguments[1:], "--ckpt_path", str(last_checkpoint(run_dir))]
        code = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        print(f"{run_dir.name}: test {'done' if code == 0 else f'failed ({code})'}", flush=True)


def validation_summary(run_dir: Path) -> dict:
    """What the manifest keeps of a finished run, so that its table outlives the run folder: the mean
    validation Dice at every validation (``val_dice_by_step``, by optimiser step: the endpoint's swing)
    and the per-pair metrics of the last validation (``val_records``, 6 decimals, NaN written as null)."""
    paths = sorted(run_dir.rglob(records_filename("val")))
    if len(paths) != 1:
        return {}
    records = read_pair_records(paths[0])
    steps = sorted({r["step"] for r in records})
    by_step = {str(s): round(finite_mean(r["dice"] for r in records if r["step"] == s), 6) for s in steps}
    last = {r["pair_id"]: {m: (round(r[m], 6) if math.isfinite(r.get(m, math.nan)) else None) for m in METRICS}
            for r in records if r["step"] == steps[-1]}
    return {"val_dice_by_step": by_step, "val_records": last}


def last_records(run_dir: Path, split: str = "val") -> dict[str, dict]:
    """The per-pair records of the run's last validation (or its test), by pair id."""
    paths = sorted(run_dir.rglob(records_filename(split)))
    if len(paths) != 1:
        raise SystemExit(f"{run_dir}: expected one {records_filename(split)}, found {len(paths)}")
    records = read_pair_records(paths[0])
    last = max(r["step"] for r in records)
    return {r["pair_id"]: r for r in records if r["step"] == last}


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


Group = list[tuple[int, dict, dict]]  # (seed, {pair id: record at the last validation}, manifest row) per run


def load_groups(manifests: Sequence[Path], split: str = "val") -> dict[tuple[str, str], Group]:
    """The successful runs of ``manifests`` (the last row of a repeated run wins) by (architecture, objective),
    with their records of ``split`` (validation: those the manifest row keeps, else the run folder's)."""
    rows = {}
    for row in (row for manifest in manifests for row in manifest_rows(manifest)):
        if row["returncode"] == 0:
            rows[(row["architecture"], row["objective"], row["seed"])] = row
    groups: dict[tuple[str, str], Group] = {}
    for (architecture, objective, seed), row in sorted(rows.items()):
        kept = row.get("val_records") if split == "val" else None
        records = ({pair: {m: math.nan if v is None else v for m, v in r.items()} for pair, r in kept.items()}
                   if kept else last_records(Path(row["run_dir"]), split))
        groups.setdefault((architecture, objective), []).append((seed, records, row))
    return groups


def run_mean(records: dict, metric: str) -> float:
    return finite_mean(r.get(metric, math.nan) for r in records.values())


def comparison(groups: dict[tuple[str, str], Group], architecture: str) -> dict | None:
    """AdaCS against the other objective of ``architecture`` with the highest mean Dice: paired t-test over
    the validation pairs of each pair's Dice averaged over seeds (pairs undefined in a run left out), and
    the difference of the run means for each seed both have."""
    means = {obj: statistics.fmean(run_mean(records, "dice") for _, records, _ in runs)
             for (arch, obj), runs in groups.items() if arch == architecture}
    others = {obj: value for obj, value in means.items() if obj in OBJECTIVES and obj != "adacs"}  # no controls
    if "adacs" not in means or not others:
        return None
    best = max(others, key=others.get)
    adacs, other = (pair_dice(groups[(architecture, obj)]) for obj in ("adacs", best))
    common = sorted(set(adacs) & set(other))
    kept = [p for p in common if math.isfinite(adacs[p]) and math.isfinite(other[p])]
    test = ttest_rel([adacs[p] for p in kept], [other[p] for p in kept])
    low, high = test.confidence_interval(0.95)
    seed_means = [{seed: run_mean(records, "dice") for seed, records, _ in groups[(architecture, obj)]}
                  for obj in ("adacs", best)]
    seeds = sorted(set(seed_means[0]) & set(seed_means[1]))
    seed_differences = [seed_means[0][s] - seed_means[1][s] for s in seeds]
    seed_interval = paired_interval(seed_differences)[1:] if seeds else (math.nan,) * 2
    return {"other": best, "difference": statistics.fmean(adacs[p] - other[p] for p in kept), "low": low,
            "high": high, "t": float(test.statistic), "p": float(test.pvalue), "pairs": len(kept),
            "left_out": len(common) - len(kept), "seed_differences": seed_differences,
            "seed_interval": tuple(seed_interval)}


def table(manifests: Sequence[Path], split: str = "val") -> None:
    """Markdown tables of the runs in ``manifests`` on ``split``."""
    groups = load_groups(manifests, split)
    print("| architecture | objective | seeds | pairs | " + " | ".join(METRICS) + " | train min (median) |")
    print("|---" * (len(METRICS) + 5) + "|")
    for (architecture, objective), runs in groups.items():
        cells = [summary([run_mean(records, m) for _, records, _ in runs]) for m in METRICS]
        minutes = statistics.median(row["train_s"] for _, _, row in runs) / 60
        print(f"| {architecture} | {objective} | {len(runs)} | {len(runs[0][1])} | " + " | ".join(cells)
              + f" | {minutes:.1f} |")
    print()
    print("| architecture | AdaCS − best other objective (Dice) | mean difference | 95 % CI | t | p | pairs (left out) "
          "| difference per seed | its 95 % CI (over seeds) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for architecture in sorted({a for a, _ in groups if a != IDENTITY}):
        c = comparison(groups, architecture)
        if c is not None:
            print(f"| {architecture} | adacs − {c['other']} | {c['difference']:+.4f} | [{c['low']:+.4f}, "
                  f"{c['high']:+.4f}] | {c['t']:.2f} | {c['p']:.3g} | {c['pairs']} ({c['left_out']}) | "
                  + " / ".join(f"{d:+.4f}" for d in c["seed_differences"])
                  + " | [{:+.4f}, {:+.4f}] |".format(*c["seed_interval"]))


def curves(manifests: Sequence[Path]) -> None:
    """Each run's mean validation Dice at every validation (optimiser step: Dice), from the manifests."""
    for row in (row for manifest in manifests for row in manifest_rows(manifest)):
        if "val_dice_by_step" in row and row["objective"] != IDENTITY:
            points = ", ".join(f"{step}: {dice:.4f}" for step, dice in row["val_dice_by_step"].items())
            print(f"{row['architecture']} {row['objective']} seed {row['seed']}: {points}")


def pair_dice(runs: Group) -> dict[str, float]:
    """Each pair's Dice averaged over the runs (seeds); NaN where any run's Dice is undefined."""
    ids = set.intersection(*(set(records) for _, records, _ in runs))
    return {p: statistics.fmean(records[p]["dice"] for _, records, _ in runs) for p in ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DATA, help="ACDC folder holding training/")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--architectures", nargs="+", default=["voxelmorph"], choices=ARCHITECTURES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="a control of another length (run and table label OBJECTIVE_eN)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value of every run, e.g. model.init_args.objective.init_args.c=5 (repeatable)")
    parser.add_argument("--label", default="", help="runs and table rows are OBJECTIVE@LABEL (e.g. the --set value)")
    parser.add_argument("--tune-patients", type=int, default=0,
                        help="validate on K held-out training patients instead of the 20 validation patients")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "acdc")
    parser.add_argument("--manifest", type=Path, nargs="+", default=None,
                        help="default OUT_DIR/manifest.jsonl; --table and --curves read several (one per architecture)")
    parser.add_argument("--identity", action="store_true", help="record the unregistered pairs of --split")
    parser.add_argument("--test", action="store_true", help="evaluate every run on ROOT/testing")
    parser.add_argument("--table", action="store_true", help="print the tables of the manifest's runs on --split")
    parser.add_argument("--curves", action="store_true", help="print each run's validation Dice at every validation")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--score-stats", action="store_true", help="what the AdaCS runs' scorers learned")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    manifests = args.manifest or [args.out_dir / "manifest.jsonl"]
    if args.table:
        return table(manifests, args.split)
    if args.curves:
        return curves(manifests)
    if len(manifests) > 1:
        parser.error("runs, --identity, --test and --score-stats write or read one --manifest")
    args.manifest = manifests[0]
    if args.identity:
        record_identity(args)
    elif args.test:
        evaluate_on_testing(args)
    elif args.score_stats:
        score_statistics(args)
    else:
        run_jobs(args)


if __name__ == "__main__":
    main()
