"""How closely does CST's trained network fit the pseudo labels it learnt from? (issue 12, diagnosis)

For a stage-end checkpoint and the pseudo labels it was trained on (``pseudo_labels/stage_NN.npy`` of
the run), the mean end-point error in mm on the label grid (the training loss, with the run's
``loss_crop``, **without** augmentation) over the training pairs, of:

- the zero field (the labels' own size);
- the trained network alone (``h∘g``, one pass: what the loss trains);
- the labels projected onto what ``h`` can express (averaged over each stride-8 feature-grid cell,
  upsampled by the CST chain): the floor of any ``g``.

It also prints how saturated ``h``'s first soft arg-min is: the share of feature-grid cells whose
largest weight of ``softmax(-temperature * cost)`` exceeds 0.99 (through such a cell almost no
gradient reaches ``g``), and the median spread of the cost over the labels.

    python benchmarks/cst_label_fit.py --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml \
        --ckpt runs/cst2d/seed0/version_0/checkpoints/epoch=55.ckpt --labels runs/cst2d/seed0/version_0/pseudo_labels/stage_07.npy
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np
import torch
from cst_coarse_oracle import cell_average

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--labels", required=True, help="the pseudo-label array the checkpoint's stage trained on")
    parser.add_argument("--max-pairs", type=int, default=None)
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
    errors: dict[str, list[float]] = {"zero field": [], "trained network (h∘g, one pass)": [],
                                      "labels projected onto h's grid": []}
    saturated, spread = [], []
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
        projected = upsample_field(cell_average(target, label_stride), target.shape[2:])
        for name, field in zip(errors, (torch.zeros_like(target), pred, projected)):
            errors[name].append(float(end_point_error(field, target, mm, model.loss_crop)))
    print(f"| field | EPE mm vs the labels ({count} training pairs, no augmentation) |\n|---|---|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.fmean(values):.2f} |")
    print(f"\nsoft arg-min (temperature {network.temperature:g}): {100 * statistics.fmean(saturated):.1f} % of cells "
          f"with a weight > 0.99; median cost spread over the labels {statistics.median(spread):.2f}")


if __name__ == "__main__":
    main()
