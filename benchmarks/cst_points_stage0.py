"""Stage-0 pseudo-label error of a random graph CNN + sparse LBP on the Learn2Reg LungCT keypoints.

For every pair, one third of the fixed keypoint rows form the fixed cloud and twice as many rows the
moving cloud, drawn either from the *other* rows (disjoint: no true partner present) or from all rows
(independent: partners may be present; the order is shuffled either way, so no correspondence is
given). Prints the mean error (mm) of the displacements against the keypoint correspondence, next
to the initial distance, per pair and setting.

    OMP_NUM_THREADS=1 python benchmarks/cst_points_stage0.py --root ../shared/data/LungCT_L2R
"""

from __future__ import annotations

import argparse
import time

import torch

from regframe.estimators.points import PointCloudEstimator
from regframe.features.graph_cnn import GraphFeatureNet
from regframe.optim.sparse_lbp import SparseLBP
from regframe.point_clouds import draw_clouds, find_point_pairs, load_point_pair, voxel_to_mm

SETTINGS = [(16, 0.01), (64, 0.01), (64, 0.1)]  # (candidates L, smooth_weight)


def label_error(estimator: PointCloudEstimator, fixed: torch.Tensor, moving: torch.Tensor, disjoint: bool,
                seed: int) -> tuple[float, float]:
    """Mean |estimated - true| and mean |true| displacement (mm) over the fixed cloud of one pair."""
    third = len(fixed) // 3
    chunk, moving_rows = draw_clouds(len(fixed), third, 2 * third, disjoint, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        estimate = estimator(fixed[chunk][None], moving[moving_rows][None])[0]
    truth = moving[chunk] - fixed[chunk]
    return float((estimate - truth).norm(dim=1).mean()), float(truth.norm(dim=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/LungCT_L2R")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = [load_point_pair(p) for p in find_point_pairs(args.root)]
    clouds = [(voxel_to_mm(p.fixed_keypoints, p.spacing), voxel_to_mm(p.moving_keypoints, p.spacing)) for p in pairs]
    print("| moving rows | L | smooth_weight | label error per pair (mm) | initial (mm) | s |")
    print("|---|---|---|---|---|---|")
    for disjoint in (True, False):
        for candidates, smooth in SETTINGS:
            torch.manual_seed(args.seed)
            estimator = PointCloudEstimator(GraphFeatureNet(k=6), SparseLBP(num_candidates=candidates, k=6,
                                                                            smooth_weight=smooth, iterations=3)).eval()
            start = time.perf_counter()
            results = [label_error(estimator, fixed, moving, disjoint, args.seed) for fixed, moving in clouds]
            errors = " / ".join(f"{e:.1f}" for e, _ in results)
            initial = " / ".join(f"{i:.1f}" for _, i in results)
            print(f"| {'other rows' if disjoint else 'all rows'} | {candidates} | {smooth} | {errors} | {initial} "
                  f"| {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
