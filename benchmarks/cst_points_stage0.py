"""Stage-0 pseudo labels of CST for keypoint clouds, and the choice of the label smoothing per fold.

Builds ``experiments/lung_cst_points.yaml``'s model (its random stage-0 network, exactly what makes
the first labels) and, for every pair and every smoothing weight λ (mm³, the smoothing spline of
:class:`regframe.estimators.point_refinement.RefinedPoints`), the labels of all fixed keypoint rows
(:func:`regframe.methods.cyclical_points.keypoint_pseudo_labels`, the config's cloud sampling). Prints
their mean error against the keypoint correspondence (mm) next to the initial distance, and for
every leave-one-pair-out fold the λ with the lowest mean error on that fold's two *training* pairs
(the held-out pair is never looked at for its own fold).

    OMP_NUM_THREADS=1 python benchmarks/cst_points_stage0.py --root ../shared/data/LungCT_L2R
"""

from __future__ import annotations

import argparse
import statistics

import torch

from regframe.cli import RegframeCLI
from regframe.methods.cyclical_points import keypoint_pseudo_labels
from regframe.point_clouds import voxel_to_mm

CONFIG = "experiments/lung_cst_points.yaml"
WEIGHTS = (0.0, 1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/LungCT_L2R")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cli = RegframeCLI(args=["--config", CONFIG, "--data.init_args.root", args.root, "--trainer.logger", "false"],
                      run=False)
    data = cli.datamodule
    data.setup("fit")
    pairs = data.train_pairs + data.test_pairs
    labeller = cli.model.random_stage0_estimator().eval()
    errors: dict[float, dict[str, float]] = {}
    print("| λ (mm³) | " + " | ".join(p.pair_id for p in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    for weight in WEIGHTS:
        labeller.smooth_weight = weight
        errors[weight] = {}
        for pair in pairs:
            generator = torch.Generator().manual_seed(args.seed)
            labels = keypoint_pseudo_labels(labeller, pair, data.train_sampling, generator, "cpu")
            truth = voxel_to_mm(pair.moving_keypoints - pair.fixed_keypoints, pair.spacing)
            errors[weight][pair.pair_id] = float((labels - truth).norm(dim=1).mean())
        print(f"| {weight:g} | " + " | ".join(f"{errors[weight][p.pair_id]:.2f}" for p in pairs) + " |")
    initial = [float(voxel_to_mm(p.moving_keypoints - p.fixed_keypoints, p.spacing).norm(dim=1).mean()) for p in pairs]
    print("| initial | " + " | ".join(f"{v:.2f}" for v in initial) + " |")
    print("\n| held-out pair | λ chosen on the other two pairs | their mean label error (mm) |\n|---|---|---|")
    for held_out in pairs:
        training = [p.pair_id for p in pairs if p is not held_out]
        best = min(WEIGHTS, key=lambda w: statistics.fmean(errors[w][i] for i in training))
        print(f"| {held_out.pair_id} | {best:g} | {statistics.fmean(errors[best][i] for i in training):.2f} |")


if __name__ == "__main__":
    main()
