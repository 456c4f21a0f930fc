"""How much of CST's refined field can ``h∘g`` alone express? (issue 12, diagnosis)

``h`` returns one displacement per cell of the feature grid (stride 8), nearly an integer offset
within ``radius`` (soft arg-min at temperature 20), upsampled by the CST chain. This script takes a
target field (the random stage-0 network's refined field: 2 warps + ICE + Adam, i.e. the stage-0
pseudo label; or, with ``--ckpt``, a trained network's: the next stage's label), projects it onto what ``h`` can express and scores the projections by Dice on the
validation pairs of the run's data module:

- ``coarse``: the field averaged over each feature-grid cell, upsampled by the CST chain (no rounding);
- ``coarse, integer offsets``: the same rounded to whole feature-grid voxels and clipped to
  ``± warps x radius`` (what 2 warps of a hard arg-min can reach);
- ``h on an ideal cost``: ``h`` itself (its coupled convex rounds, box filters and upsampling) on the cost
  ``10 · ||offset − coarse||²``, i.e. ``h∘g`` with a perfect ``g``: one pass, and two passes with the second
  on the residual ``target − first`` (additive: an estimate of the composition for small residuals);
  ``--ideal-radius`` and ``--ideal-smooth-iters`` change that ``h`` alone (what a redesigned ``h`` would allow).

If even the projection of the pseudo label scores far below the pseudo label, the no-Adam Dice of
any trained ``g`` is capped by ``h``'s grid, not by its features.

    python benchmarks/cst_coarse_oracle.py --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics

import torch
import torch.nn.functional as F

from regframe.cli import RegframeCLI
from regframe.estimators.protocols import trained_network
from regframe.metrics import pair_metrics
from regframe.optim.convex import soft_coupled_convex
from regframe.optim.correlation import displacement_offsets
from regframe.optim.upsample import upsample_field


def cell_average(disp: torch.Tensor, stride: int) -> torch.Tensor:
    """``disp (B, D, *S)`` in image voxels -> ``(B, D, *S/stride)`` in feature-grid voxels."""
    pool = F.avg_pool2d if disp.dim() == 4 else F.avg_pool3d
    return pool(disp, stride) / stride


def ideal_cost(cells: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``||offset_l − cells||²`` as a cost volume ``(B, L, *G)`` for ``cells (B, D, *G)`` and ``offsets (L, D)``
    in feature-grid voxels: its arg-min in every cell is the offset nearest to the cell's target vector."""
    shape = (1, *offsets.shape, *([1] * (cells.dim() - 2)))
    return (offsets.view(shape) - cells.unsqueeze(1)).pow(2).sum(2)


def ideal_h(network: torch.nn.Module, cells: torch.Tensor, size: tuple[int, ...], scale: float = 10.0) -> torch.Tensor:
    """What ``network``'s ``h`` (coupled convex rounds, box filters, upsampling chain) returns on an ideal
    cost for the target ``cells (B, D, *G)`` (feature-grid voxels, clipped to one pass's reach), upsampled
    to ``size`` in voxels of that grid: ``h∘g`` for a perfect ``g``."""
    offsets = displacement_offsets(network.radius, cells.dim() - 2, device=cells.device)
    cost = scale * ideal_cost(cells.clamp(-network.radius, network.radius), offsets)
    return upsample_field(soft_coupled_convex(cost, offsets, network.schedule, network.temperature,
                                              network.smooth_iters), size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--warps", type=int, default=2)
    parser.add_argument("--ckpt", help="target = this checkpoint's refined field (default: the random stage-0 network's)")
    parser.add_argument("--ideal-radius", type=int, help="the ideal h's search radius (default: the network's)")
    parser.add_argument("--ideal-smooth-iters", type=int, help="the ideal h's box filters per round (default: the network's)")
    args = parser.parse_args()
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    data.setup("validate")
    if args.ckpt:
        model.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"])
        random = model.estimator.eval()
    else:
        random = model.random_stage0_estimator().eval()
    network = trained_network(random)
    ideal = copy.copy(network)
    ideal.radius = args.ideal_radius if args.ideal_radius is not None else network.radius
    ideal.smooth_iters = args.ideal_smooth_iters if args.ideal_smooth_iters is not None else network.smooth_iters
    stride, reach = network.feature_net.stride, args.warps * network.radius
    scores: dict[str, list[float]] = {"identity": [], "target (refined network)": [], "coarse": [],
                                      "coarse, integer offsets": [], "h on an ideal cost, one pass": [],
                                      "h on an ideal cost, two passes (second on the residual)": []}
    for batch in list(data.val_dataloader())[: args.max_pairs]:
        size = batch["fixed"].shape[2:]
        with torch.no_grad():
            target = random(batch["fixed"], batch["moving"]).float()
        coarse = cell_average(target, stride)
        fields = {"identity": torch.zeros_like(target), "target (refined network)": target,
                  "coarse": upsample_field(coarse, size),
                  "coarse, integer offsets": upsample_field(coarse.round().clamp(-reach, reach), size)}
        first = ideal_h(ideal, coarse, size)
        fields["h on an ideal cost, one pass"] = first
        fields["h on an ideal cost, two passes (second on the residual)"] = first + ideal_h(
            ideal, cell_average(target - first, stride), size)
        for name, disp in fields.items():
            scores[name].append(pair_metrics(batch["fixed_label"], batch["moving_label"], disp,
                                             batch["spacing"][0].tolist(), hd95=False)["dice"])
    print(f"| field | Dice ({len(scores['identity'])} pairs) |\n|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {statistics.fmean(v for v in values if math.isfinite(v)):.4f} |")


if __name__ == "__main__":
    main()
