"""CST speed and memory: training iterations/s and peak memory of the learning stream, and
per-pair inference time of each test-time refinement setting ({1, 2} warps x {no Adam, Adam},
ICE on), and the paper schedule's wall time estimated from those figures (iterations plus one
pseudo-label refresh per stage; validation not included). Random images of the requested size (default: Learn2Reg abdomen, 192x160x256);
runs on CUDA when available, else CPU. Prints one table.
Uses regframe's public API: run from the repository root with this checkout installed
(``pip install -e .``) or on ``PYTHONPATH=.``.

    OMP_NUM_THREADS=2 python benchmarks/cst_speed.py                      # full size
    python benchmarks/cst_speed.py --shape 96 80 128 --train-iters 2     # half size, quicker
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.protocols import trained_network
from regframe.methods.cyclical import CyclicalSelfTraining
from regframe.optim.instance import InstanceOptimisation

SETTINGS = [("1 warp, no Adam", dict(warps=1, adam=False)), ("1 warp + Adam", dict(warps=1, adam=True)),
            ("2 warps, no Adam", dict(warps=2, adam=False)), ("2 warps + Adam", dict(warps=2, adam=True))]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, process peak RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[192, 160, 256])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--train-iters", type=int, default=3)
    parser.add_argument("--adam-iters", type=int, default=50)
    parser.add_argument("--stages", type=int, default=8, help="schedule estimate: stages (paper: 8)")
    parser.add_argument("--stage-iters", type=int, default=1000, help="schedule estimate: iterations per stage")
    parser.add_argument("--train-pairs", type=int, default=190, help="schedule estimate: pairs labelled per refresh")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    io = InstanceOptimisation(iterations=args.adam_iters)
    module = CyclicalSelfTraining(cst_pipeline(io=io), label_resample_factor=0.5, loss_crop=8).to(device)
    network = trained_network(module.estimator)
    shape = tuple(args.shape)
    half = tuple(n // 2 for n in shape)
    rows = []

    # learning stream: CST's loss (augmentation + h∘g at half-resolution output + EPE), Adam step
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    fixed, moving = torch.rand(args.batch, 1, *shape, device=device), torch.rand(args.batch, 1, *shape, device=device)
    target = torch.randn(args.batch, 3, *half, device=device)
    spacing = torch.full((args.batch, 3), 2.0, device=device)  # 2 mm images, 4 mm labels
    module.train()
    timings = []
    for _ in range(args.train_iters + 1):  # the first iteration is warm-up
        sync(device)
        start = time.perf_counter()
        loss = module.pseudo_label_loss(fixed, moving, target, spacing)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        sync(device)
        timings.append(time.perf_counter() - start)
    per_iter = sum(timings[1:]) / max(len(timings) - 1, 1)
    rows.append((f"training, batch {args.batch}", f"{1 / per_iter:.3f} it/s ({per_iter:.2f} s/it)",
                 f"{peak_memory_mb(device):.0f}"))

    module.eval()
    pair = fixed[:1], moving[:1]
    inference_seconds = {}
    for name, settings in SETTINGS:
        variant = cst_pipeline(network, settings["warps"], io=io.with_iterations(args.adam_iters if settings["adam"] else 0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        variant(*pair)  # warm-up
        sync(device)
        start = time.perf_counter()
        variant(*pair)
        sync(device)
        inference_seconds[name] = time.perf_counter() - start
        rows.append((f"inference: {name} (+ICE)", f"{inference_seconds[name]:.2f} s/pair",
                     f"{peak_memory_mb(device):.0f}"))

    refresh = inference_seconds["2 warps + Adam"]
    schedule = args.stages * (args.stage_iters * per_iter + args.train_pairs * refresh)
    rows.append((f"estimate: {args.stages} stages x {args.stage_iters} its + a refresh of {args.train_pairs} pairs "
                 "per stage (from the rows above)", f"{schedule / 60:.1f} min", "-"))

    threads = torch.get_num_threads()
    print(f"\nCST speed, input {'x'.join(map(str, shape))}, device {device} ({threads} threads), "
          f"Adam {args.adam_iters} iterations\n")
    print("| what | speed | peak memory (MiB) |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    if device.type == "cpu":
        print("\nCPU peak memory is the process's peak resident set size so far (cumulative).")


if __name__ == "__main__":
    main()
