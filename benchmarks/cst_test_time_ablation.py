"""CST test-time ablation (paper, Table 1 lower part): Dice, SDlogJ and time per pair of a trained
model's estimator under {1, 2} warps x {no Adam, Adam} (ICE on), plus the identity, on the
validation pairs of the run's data module. ``--networks trained random`` also evaluates the
random stage-0 network (``CyclicalSelfTraining.random_stage0_estimator``, He init) under the same
settings, i.e. what the training stages bought over the random features.
Uses regframe's public API: run from the repository root with this checkout installed
(``pip install -e .``) or on ``PYTHONPATH=.``.

    python benchmarks/cst_test_time_ablation.py --ckpt runs/abdomen_cst_cpu/version_0/checkpoints/last.ckpt \
        --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_cpu.yaml [--max-pairs 15]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from regframe.cli import RegframeCLI
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.inverse_consistent import InverseConsistent
from regframe.estimators.protocols import trained_network, unwrapped
from regframe.metrics import pair_metrics

SETTINGS = [("1 warp, no Adam", dict(warps=1, adam=False)), ("1 warp + Adam", dict(warps=1, adam=True)),
            ("2 warps, no Adam", dict(warps=2, adam=False)), ("2 warps + Adam", dict(warps=2, adam=True))]


def variant(estimator: torch.nn.Module, warps: int, adam_iterations: int) -> torch.nn.Module:
    """The CST pipeline around ``estimator``'s trained network with ``warps`` and ``adam_iterations``,
    keeping the config's ICE iterations and the other IO settings."""
    ice = [m.iterations for m in unwrapped(estimator) if isinstance(m, InverseConsistent)]
    return cst_pipeline(trained_network(estimator), warps, ice[0] if ice else 0, estimator.io.with_iterations(adam_iterations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--adam-iterations", type=int, default=50)
    parser.add_argument("--networks", nargs="+", choices=("trained", "random"), default=["trained"],
                        help="feature networks to evaluate: the checkpoint's and/or the random stage-0 one")
    args = parser.parse_args()
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    state = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    data.setup("validate")
    batches = list(data.val_dataloader())[: args.max_pairs]
    rows = []
    networks = {network: model.estimator if network == "trained" else model.random_stage0_estimator()
                for network in args.networks}
    variants = [("identity", None)] + [
        (f"{network}: {name}" if len(args.networks) > 1 else name,
         variant(estimator, settings["warps"], args.adam_iterations if settings["adam"] else 0))
        for network, estimator in networks.items() for name, settings in SETTINGS]
    for name, estimator in variants:
        dice, sdlogj, seconds = [], [], []
        for batch in batches:
            start = time.perf_counter()
            if estimator is None:
                disp = torch.zeros(1, 3, *batch["fixed"].shape[2:])
            else:
                with torch.no_grad():
                    disp = estimator(batch["fixed"], batch["moving"])
            seconds.append(time.perf_counter() - start)
            m = pair_metrics(batch["fixed_label"], batch["moving_label"], disp, batch["spacing"][0].tolist(), hd95=False)
            dice.append(m["dice"])
            sdlogj.append(m["sdlogj_l2r"])
        finite = [d for d in dice if math.isfinite(d)]
        rows.append((name, statistics.mean(finite), statistics.mean(sdlogj), statistics.mean(seconds)))
        print(f"{name}: Dice {rows[-1][1]:.4f}", flush=True)
    print(f"\nTest-time ablation on {len(batches)} validation pairs (Adam {args.adam_iterations} iterations)\n")
    print("| setting | Dice | SDlogJ (L2R) | s/pair |\n|---|---|---|---|")
    for name, d, s, t in rows:
        print(f"| {name} | {d:.4f} | {s:.3f} | {t:.1f} |")


if __name__ == "__main__":
    main()
