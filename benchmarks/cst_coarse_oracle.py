"""How much of CST's refined field can ``h∘g`` alone express? (issue 12, diagnosis)

``h`` returns one displacement per cell of the feature grid (stride 8), nearly an integer offset
within ``radius`` (soft arg-min at temperature 20), upsampled by the CST chain. This script takes a
target field (the random stage-0 network's refined field: 2 warps + ICE + Adam, i.e. the stage-0
pseudo label), projects it onto what ``h`` can express and scores the projections by Dice on the
validation pairs of the run's data module:

- ``coarse``: the field averaged over each feature-grid cell, upsampled by the CST chain (no rounding);
- ``coarse, integer offsets``: the same rounded to whole feature-grid voxels and clipped to
  ``± warps x radius`` (what 2 warps of a hard arg-min can reach).

If even the projection of the pseudo label scores far below the pseudo label, the no-Adam Dice of
any trained ``g`` is capped by ``h``'s grid, not by its features.

    python benchmarks/cst_coarse_oracle.py --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from regframe.cli import RegframeCLI
from regframe.estimators.protocols import trained_network
from regframe.metrics import pair_metrics
from regframe.optim.upsample import upsample_field


def cell_average(disp: torch.Tensor, stride: int) -> torch.Tensor:
    """``disp (B, D, *S)`` in image voxels -> ``(B, D, *S/stride)`` in feature-grid voxels."""
    pool = F.avg_pool2d if disp.dim() == 4 else F.avg_pool3d
    return pool(disp, stride) / stride


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--warps", type=int, default=2)
    args = parser.parse_args()
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    data.setup("validate")
    random = model.random_stage0_estimator().eval()
    network = trained_network(random)
    stride, reach = network.feature_net.stride, args.warps * network.radius
    scores: dict[str, list[float]] = {"identity": [], "target (refined random network)": [], "coarse": [],
                                      "coarse, integer offsets": []}
    for batch in list(data.val_dataloader())[: args.max_pairs]:
        size = batch["fixed"].shape[2:]
        with torch.no_grad():
            target = random(batch["fixed"], batch["moving"]).float()
        coarse = cell_average(target, stride)
        fields = {"identity": torch.zeros_like(target), "target (refined random network)": target,
                  "coarse": upsample_field(coarse, size),
                  "coarse, integer offsets": upsample_field(coarse.round().clamp(-reach, reach), size)}
        for name, disp in fields.items():
            scores[name].append(pair_metrics(batch["fixed_label"], batch["moving_label"], disp,
                                             batch["spacing"][0].tolist(), hd95=False)["dice"])
    print(f"| field | Dice ({len(scores['identity'])} pairs) |\n|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {statistics.fmean(v for v in values if math.isfinite(v)):.4f} |")


if __name__ == "__main__":
    main()
