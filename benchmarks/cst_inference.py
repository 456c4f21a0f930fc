"""CST inference at full size on real abdomen pairs, side by side with the published ConvexAdam package.

For each of the first ``--pairs`` ``registration_val`` pairs of ``AbdomenCTCT_synth`` (192x160x256,
2 mm) the methods run one after the other (interleaved, same threads): the package (``convex_adam_pt``,
its defaults; optional, skipped when not installed), CST's test-time pipeline (2 warps + ICE + Adam 50
on the network's unnormalised IO features, as before ``cst_io()``) with Adam on the whole grid, and the
same with Adam's data term only on the dilated fixed foreground (``foreground_threshold``). The
network is CST's He-initialised random stage-0 network (seed 0; no trained full-size checkpoint is
at hand): the timing does not depend on the weights, and the Dice of the two Adam variants shows
what the restriction changes. ``--variants NORM:SCALE[:PASSES] ...`` adds foreground-Adam rows with
the IO features standardised per channel (``channel``) or not (``none``), multiplied by SCALE, and
PASSES k5 box filters of the final field (``InstanceOptimisation(feature_normalisation,
feature_scale, final_smoothing)``; the reference code's 3 passes, default 0); ``--split training`` runs the 7
training pairs on which such settings are chosen. Prints one table (median seconds per pair; Dice,
folding) and the paired Dice difference of each foreground variant against the whole-grid Adam.

    pip install convexAdam --no-deps   # optional
    OMP_NUM_THREADS=2 python benchmarks/cst_inference.py --pairs 5 --log runs/cst_inference.jsonl
    OMP_NUM_THREADS=2 python benchmarks/cst_inference.py --split training --skip-package --no-whole-grid \
        --variants channel:1 channel:5:3 --log runs/cst_io_training.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from training_free import (  # sibling script
    PACKAGE,
    abdomen_pairs,
    load_pair,
    published_convex_adam,
    shared_data,
)

from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.protocols import trained_network
from regframe.methods.cyclical import CyclicalSelfTraining, _reinitialise
from regframe.metrics import pair_metrics
from regframe.optim.instance import InstanceOptimisation
from regframe.paired_statistics import paired_interval

WHOLE_GRID = "cst 2 warps + ICE + Adam 50"
FOREGROUND = "cst, Adam on the foreground"


def cst_network() -> torch.nn.Module:
    """CST's random He-initialised stage-0 network (the network of ``cst_pipeline()``)."""
    network = trained_network(CyclicalSelfTraining(cst_pipeline()).estimator)
    _reinitialise(network, seed=0, init="kaiming")
    return network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--foreground-threshold", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log", type=Path, default=Path("runs/cst_inference.jsonl"))
    parser.add_argument("--split", choices=("registration_val", "training"), default="registration_val")
    parser.add_argument("--variants", nargs="*", default=[], metavar="NORM:SCALE",
                        help="extra foreground-Adam rows, e.g. channel:5:3 (normalisation none|channel, feature scale, "
                             "final k5 smoothing passes)")
    parser.add_argument("--skip-package", action="store_true")
    parser.add_argument("--no-whole-grid", action="store_true", help="leave out the whole-grid Adam row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = cst_network()
    settings = dict(iterations=50, lr=1.0, data_weight=12.0, smooth_weight=0.65)
    methods = {} if args.no_whole_grid else {WHOLE_GRID: cst_pipeline(network, 2, io=InstanceOptimisation(**settings))}
    methods[FOREGROUND] = cst_pipeline(network, 2, io=InstanceOptimisation(
        **settings, foreground_threshold=args.foreground_threshold))
    for variant in args.variants:
        normalisation, *rest = variant.split(":")
        scale, passes = float(rest[0]) if rest else 1.0, int(rest[1]) if len(rest) > 1 else 0
        io = InstanceOptimisation(**settings, foreground_threshold=args.foreground_threshold,
                                  feature_normalisation=normalisation, feature_scale=scale,
                                  final_smoothing=passes, final_smoothing_kernel=5)
        methods[f"{FOREGROUND}, IO features {normalisation} x{scale:g}, final k5 x{passes}"] = \
            cst_pipeline(network, 2, io=io)
    package = None if args.skip_package else published_convex_adam()
    if package is not None:
        methods = {PACKAGE: package, **methods}
    args.log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in abdomen_pairs(shared_data(), args.pairs, split=args.split):
        fixed, f, m, *labels = load_pair(pair)
        for name, method in methods.items():
            start = time.perf_counter()
            disp = method(f, m)  # no outer no_grad: the package's Adam needs autograd
            seconds = time.perf_counter() - start
            result = pair_metrics(*labels, disp.float(), spacing=list(fixed.spacing))
            row = {"pair": pair["id"], "method": name, "dice": result["dice"], "fold_pct": result["fold_pct"],
                   "sdlogj": result["sdlogj"], "seconds": seconds}
            rows.append(row)
            with args.log.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(f"\n{args.threads} threads; network: random He-initialised stage-0 CST network (seed 0)\n")
    print("| method | pairs | Dice | fold % | SDlogJ | median s / pair |\n|---|---|---|---|---|---|")
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        mean = {k: statistics.fmean(r[k] for r in mine) for k in ("dice", "fold_pct", "sdlogj")}
        print(f"| {name} | {len(mine)} | {mean['dice']:.4f} | {mean['fold_pct']:.4f} | {mean['sdlogj']:.3f} | "
              f"{statistics.median(r['seconds'] for r in mine):.1f} |")
    reference = WHOLE_GRID if WHOLE_GRID in methods else FOREGROUND
    base = {r["pair"]: r["dice"] for r in rows if r["method"] == reference}
    for name in methods:
        if name.startswith(FOREGROUND) and name != reference:
            differences = [r["dice"] - base[r["pair"]] for r in rows if r["method"] == name]
            mean, low, high = paired_interval(differences)
            print(f"Dice, {name} minus {reference}: {mean:+.4f} [{low:+.4f}, {high:+.4f}] ({len(differences)} pairs)")


if __name__ == "__main__":
    main()
