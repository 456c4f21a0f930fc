"""CST inference at full size on real abdomen pairs, side by side with the published ConvexAdam package.

For each of the first ``--pairs`` ``registration_val`` pairs of ``AbdomenCTCT_synth`` (192x160x256,
2 mm) the methods run one after the other (interleaved, same threads): the package (``convex_adam_pt``,
its defaults; optional, skipped when not installed), CST's test-time pipeline (2 warps + ICE + Adam 50
on the network's IO features, ``experiments/abdomen_cst.yaml``) with Adam on the whole grid, and the
same with Adam's data term only on the dilated fixed foreground (``foreground_threshold``). The
network is CST's He-initialised random stage-0 network (seed 0; no trained full-size checkpoint is
at hand): the timing does not depend on the weights, and the Dice of the two Adam variants shows
what the restriction changes. Prints one table (median seconds per pair; Dice,
folding) and the paired Dice difference of the restricted variant.

    pip install convexAdam --no-deps   # optional
    OMP_NUM_THREADS=2 python benchmarks/cst_inference.py --pairs 5 --log runs/cst_inference.jsonl
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = cst_network()
    io = InstanceOptimisation(iterations=50, lr=1.0, data_weight=12.0, smooth_weight=0.65)
    masked_io = InstanceOptimisation(iterations=50, lr=1.0, data_weight=12.0, smooth_weight=0.65,
                                     foreground_threshold=args.foreground_threshold)
    methods = {"cst 2 warps + ICE + Adam 50": cst_pipeline(network, 2, io=io),
               "cst, Adam on the foreground": cst_pipeline(network, 2, io=masked_io)}
    package = published_convex_adam()
    if package is not None:
        methods = {PACKAGE: package, **methods}
    args.log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in abdomen_pairs(shared_data(), args.pairs):
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
    whole = {r["pair"]: r["dice"] for r in rows if r["method"] == "cst 2 warps + ICE + Adam 50"}
    differences = [r["dice"] - whole[r["pair"]] for r in rows if r["method"] == "cst, Adam on the foreground"]
    mean, low, high = paired_interval(differences)
    print(f"\nDice, foreground Adam minus whole-grid Adam: {mean:+.4f} [{low:+.4f}, {high:+.4f}] ({len(differences)} pairs)")


if __name__ == "__main__":
    main()
