"""How closely does CST's trained network fit the pseudo labels it learnt from? (issue 12, diagnosis)

For a stage-end checkpoint and the pseudo labels it was trained on (``pseudo_labels/stage_NN.npy`` of
the run), the mean end-point error in mm on the label grid (the training loss, with the run's
``loss_crop``, **without** augmentation) over the training pairs, of:

- the zero field (the labels' own size);
- the trained network alone (``h∘g``, one pass: what the loss trains);
- the labels projected onto what ``h`` can express (averaged over each stride-8 feature-grid cell,
  upsampled by the CST chain): the floor of any ``g``; and that projection clipped to the reach of one
  pass (``± radius`` feature-grid voxels), then also rounded to whole offsets (a saturated arg-min), for
  one pass and for two (``± 2 radius``);
- ``h`` itself (its coupled convex rounds, box filters and upsampling chain) run on an *ideal* cost volume,
  ``scale · ||offset − projected label||²`` per cell (``--ideal-scales``): what ``h`` returns when ``g`` is
  perfect, so the floor of ``h∘g`` including ``h``'s own smoothing.

Split by the distance of a label voxel from the nearest intensity edge of the fixed image (``--zones``),
the same errors show where the fit fails: the synthetic images are piecewise constant, so beyond the
receptive-field radius of ``g`` (21 image voxels) from any edge its features are constant and the cost
volume is flat; what ``h`` returns there comes from its coupling, not from matching.

It also prints how saturated ``h``'s first soft arg-min is: the share of feature-grid cells whose
largest weight of ``softmax(-temperature * cost)`` exceeds 0.99 (through such a cell almost no
gradient reaches ``g``), and the median spread of the cost over the labels.

    python benchmarks/cst_label_fit.py --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml \
        --ckpt runs/cst2d/seed0/version_0/checkpoints/epoch=55.ckpt --labels runs/cst2d/seed0/version_0/pseudo_labels/stage_07.npy
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cst_coarse_oracle import cell_average, ideal_h
from scipy.ndimage import distance_transform_edt

from regframe.cli import RegframeCLI
from regframe.estimators.protocols import field_at, trained_network
from regframe.losses import end_point_error
from regframe.optim.correlation import cost_volume
from regframe.optim.upsample import upsample_field


def training_pair(data: Any, labels: np.ndarray, index: int) -> tuple[torch.Tensor, ...]:
    """Training pair ``index`` of ``data`` with its stored label: ``fixed, moving (1, 1, *S)``, the label
    ``(1, D, *L)`` in label-grid voxels, and the fixed image's spacing ``(1, D)`` in mm per image voxel."""
    fixed_index, moving_index = data.train_pairs[index]
    return (data.train_subjects[fixed_index]["image"][None], data.train_subjects[moving_index]["image"][None],
            torch.from_numpy(np.array(labels[index], dtype=np.float32))[None],
            data.train_subjects[fixed_index]["spacing"][None].float())


ZONES_MM = (16.0, 42.0)  # near an edge; within g's receptive-field radius (21 voxels x 2 mm); beyond it


def edge_distance_mm(image: torch.Tensor, label_shape: tuple[int, ...], mm: list[float]) -> np.ndarray:
    """Distance in mm from every voxel of the label grid to the nearest voxel where the area-resampled
    ``image (1, 1, *S)`` changes between neighbours (an intensity edge), ``mm`` mm per label voxel."""
    small = F.interpolate(image.float(), size=label_shape, mode="area")[0, 0].numpy()
    edge = np.zeros(small.shape, dtype=bool)
    for axis in range(small.ndim):
        step = np.abs(np.diff(small, axis=axis)) > 1e-4
        lower = [slice(None)] * small.ndim
        lower[axis] = slice(0, -1)
        edge[tuple(lower)] |= step
    return distance_transform_edt(~edge, sampling=mm) if edge.any() else np.full(small.shape, np.inf)


def zone_errors(fields: dict[str, torch.Tensor], target: torch.Tensor, mm: list[float], crop: int,
                distance: np.ndarray, sums: dict[str, np.ndarray], counts: np.ndarray) -> None:
    """Add each field's per-voxel end-point error (mm) to ``sums[name][zone]`` and the voxel counts of each zone."""
    window = (slice(crop, -crop) if crop > 0 else slice(None),) * distance.ndim
    zone = np.digitize(distance[window], ZONES_MM, right=True)
    counts += np.bincount(zone.ravel(), minlength=len(ZONES_MM) + 1)
    scale = torch.tensor(mm).view(-1, *([1] * distance.ndim))
    for name, field in fields.items():
        epe = ((field[0] - target[0]) * scale).norm(dim=0)[window].numpy()
        sums.setdefault(name, np.zeros(len(ZONES_MM) + 1))
        sums[name] += np.bincount(zone.ravel(), weights=epe.ravel(), minlength=len(ZONES_MM) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--labels", required=True, help="the pseudo-label array the checkpoint's stage trained on")
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--ideal-scales", type=float, nargs="*", default=[1.0, 10.0, 100.0])
    parser.add_argument("--zones", action="store_true", help="also split the errors by distance from an edge")
    args = parser.parse_args()
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false"], run=False)
    model, data = cli.model, cli.datamodule
    model.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    data.setup("fit")
    labels = np.load(args.labels, mmap_mode="r")
    if labels.shape[0] != len(data.train_pairs):
        raise SystemExit(f"{args.labels}: {labels.shape[0]} fields for {len(data.train_pairs)} training pairs")
    network = trained_network(model.estimator)
    label_stride = round(network.feature_net.stride * model.label_resample_factor)
    reach = network.radius
    errors: dict[str, list[float]] = {"zero field": [], "trained network (h∘g, one pass)": [],
                                      "labels projected onto h's grid": [],
                                      "projected, clipped to one pass's reach": [],
                                      "projected, whole offsets within one pass's reach": [],
                                      "projected, whole offsets within two passes' reach": [],
                                      **{f"h on an ideal cost, scale {scale:g}": [] for scale in args.ideal_scales}}
    saturated, spread = [], []
    zone_sums: dict[str, np.ndarray] = {}
    zone_counts = np.zeros(len(ZONES_MM) + 1)
    count = len(data.train_pairs) if args.max_pairs is None else min(args.max_pairs, len(data.train_pairs))
    for index in range(count):
        fixed, moving, target, spacing = training_pair(data, labels, index)
        mm = (spacing[0] / model.label_resample_factor).tolist()
        with torch.no_grad():
            pred = field_at(network, fixed, moving, target.shape[2:]).float()
            cost = cost_volume(*network.pair_features(fixed, moving), network.radius, network.metric,
                               network.feature_scale, network.box_filters)
        weights = torch.softmax(-network.temperature * cost, dim=1)
        saturated.append(float((weights.amax(dim=1) > 0.99).float().mean()))
        spread.append(float((cost.amax(dim=1) - cost.amin(dim=1)).median()))
        cells = cell_average(target, label_stride)
        projections = [upsample_field(cells, target.shape[2:]),
                       upsample_field(cells.clamp(-reach, reach), target.shape[2:]),
                       upsample_field(cells.round().clamp(-reach, reach), target.shape[2:]),
                       upsample_field(cells.round().clamp(-2 * reach, 2 * reach), target.shape[2:])]
        projections += [ideal_h(network, cells, tuple(target.shape[2:]), scale) for scale in args.ideal_scales]
        fields = dict(zip(errors, (torch.zeros_like(target), pred, *projections)))
        for name, field in fields.items():
            errors[name].append(float(end_point_error(field, target, mm, model.loss_crop)))
        if args.zones:
            zone_errors(fields, target, mm, model.loss_crop, edge_distance_mm(fixed, tuple(target.shape[2:]), mm),
                        zone_sums, zone_counts)
    print(f"| field | EPE mm vs the labels ({count} training pairs, no augmentation) |\n|---|---|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.fmean(values):.2f} |")
    if args.zones:
        bounds = (0.0, *ZONES_MM, math.inf)
        names = [f"{low:g}-{high:g} mm" for low, high in zip(bounds, bounds[1:])]
        print(f"\n| field (EPE mm by distance from the nearest edge of the fixed image) | {' | '.join(names)} |\n"
              f"|---|{'---|' * len(names)}\n| share of voxels | "
              + " | ".join(f"{100 * c / zone_counts.sum():.1f} %" for c in zone_counts) + " |")
        for name, sums in zone_sums.items():
            print(f"| {name} | " + " | ".join(f"{v / max(c, 1):.2f}" for v, c in zip(sums, zone_counts)) + " |")
    print(f"\nsoft arg-min (temperature {network.temperature:g}): {100 * statistics.fmean(saturated):.1f} % of cells "
          f"with a weight > 0.99; median cost spread over the labels {statistics.median(spread):.2f}")


if __name__ == "__main__":
    main()
