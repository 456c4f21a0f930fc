"""Choose the MIND pyramid's ``min_level_cells`` on abdomen training pairs at several resolutions.

On small volumes the pyramid's coarsest level has a few cells per axis and searches a large fraction
of the field of view (prostate MR 69×69×64: a 9×9×8 grid searching ±24 voxels). Whether a level
should run is decided by its cells along the shortest axis (``min_level_cells``,
:meth:`regframe.estimators.pyramid.CorrelationPyramidEstimator.active_levels`). The threshold is chosen
here, never on reported pairs: the 7 pairs of AbdomenCTCT_synth training subjects on which the other
``pyramid_mind`` settings were chosen (``training_free.TRAINING_PAIRS``; inter-patient CT, large
displacements, so the coarse level matters), each resampled from 2 mm to isotropic spacings of 2 to
6 mm so that the coarsest level has 20 down to 7 cells. (LPBA40 training pairs were tried first and
dropped: its brains are aligned to one atlas, the coarsest level's step is exactly zero there, so every
candidate ties.) Every candidate runs the registry's ``pyramid_mind`` with that threshold; candidates
that select the same levels on a volume share one run. Rule: the highest mean Dice over all
(spacing, pair) rows; ties go to the smaller threshold.

Example::

    OMP_NUM_THREADS=1 python benchmarks/pyramid_levels_selection.py --out benchmarks/results/pyramid_levels_selection.jsonl
    python benchmarks/pyramid_levels_selection.py --out benchmarks/results/pyramid_levels_selection.jsonl --table
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor
from training_free import abdomen_pairs, load_pair, shared_data

from regframe.estimators.pyramid import mind_pyramid
from regframe.estimators.registry import pyramid_mind
from regframe.io import Volume
from regframe.metrics import pair_metrics
from regframe.preprocess import resize_subject

REPO = Path(__file__).resolve().parents[1]
SPACINGS_MM = (2.0, 3.0, 4.0, 5.0, 6.0)
CANDIDATES = (1, 6, 8, 10, 12, 16)


def resample(volume: Volume, image: Tensor, label: Tensor, spacing_mm: float) -> tuple[Tensor, Tensor, list[float]]:
    """Image ``(1, 1, *S)`` (linear) and label ``(*S)`` (nearest) of ``volume``'s grid resampled to isotropic
    ``spacing_mm`` over the same field of view (:func:`regframe.preprocess.resize_subject`), and the new
    spacing (mm per axis)."""
    shape = [max(1, math.floor(size * old / spacing_mm)) for size, old in zip(image.shape[2:], volume.spacing)]
    subject = resize_subject({"image": image[0], "label": label[None], "affine": volume.affine,
                              "spacing": torch.tensor(volume.spacing, dtype=torch.float64)}, shape)
    return subject["image"][None], subject["label"][0], subject["spacing"].tolist()


def run(out: Path) -> None:
    done = {(r["spacing_mm"], r["pair"], tuple(r["levels"])) for r in read_rows(out)}
    for spacing_mm in SPACINGS_MM:
        for entry in abdomen_pairs(shared_data(), None, "training"):
            volume, fixed, moving, fixed_label, moving_label = load_pair(entry)
            fixed, fixed_label, spacing = resample(volume, fixed, fixed_label, spacing_mm)
            moving, moving_label, _ = resample(volume, moving, moving_label, spacing_mm)
            by_levels: dict[tuple, list[int]] = {}
            for k in CANDIDATES:
                levels = tuple(f for f, _ in mind_pyramid(min_level_cells=k).active_levels(fixed.shape[2:]))
                by_levels.setdefault(levels, []).append(k)
            for levels, candidates in by_levels.items():
                pair = entry["id"]
                if (spacing_mm, pair, levels) in done:
                    continue
                estimator = pyramid_mind(min_level_cells=candidates[0])
                start = time.perf_counter()
                field = estimator(fixed, moving)
                seconds = time.perf_counter() - start
                metrics = pair_metrics(fixed_label, moving_label, field.detach().float(), spacing=spacing, hd95=False)
                row = {"spacing_mm": spacing_mm, "shape": list(fixed.shape[2:]), "pair": pair, "levels": list(levels),
                       "candidates": candidates, "dice": metrics["dice"], "fold_pct": metrics["fold_pct"],
                       "sdlogj": metrics["sdlogj"], "seconds": seconds, "threads": torch.get_num_threads()}
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []


def choose(rows: list[dict]) -> int:
    """The candidate with the highest mean Dice over every (spacing, pair) row; ties: the smaller."""
    means = {k: statistics.fmean(r["dice"] for r in rows if k in r["candidates"]) for k in CANDIDATES}
    return max(CANDIDATES, key=lambda k: (round(means[k], 6), -k))


def table(rows: list[dict]) -> str:
    """Mean Dice (and folding %) per candidate and spacing, the overall mean and the chosen candidate."""
    spacings = sorted({r["spacing_mm"] for r in rows}, reverse=True)
    header = " | ".join(f"{s:g} mm" for s in spacings)
    lines = [f"| min_level_cells | {header} | all | fold % |", "|---" * (len(spacings) + 3) + "|"]
    for k in CANDIDATES:
        mine = [r for r in rows if k in r["candidates"]]
        cells = []
        for s in spacings:
            at = [r["dice"] for r in mine if r["spacing_mm"] == s]
            cells.append(f"{statistics.fmean(at):.4f}" if at else "")
        lines.append(f"| {k} | {' | '.join(cells)} | {statistics.fmean(r['dice'] for r in mine):.4f} | "
                     f"{statistics.fmean(r['fold_pct'] for r in mine):.4f} |")
    shapes = {s: next(r["shape"] for r in rows if r["spacing_mm"] == s) for s in spacings}
    lines += ["", "grids: " + ", ".join(f"{s:g} mm {'×'.join(map(str, shape))}" for s, shape in shapes.items()),
              f"chosen: min_level_cells = {choose(rows)}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pyramid_levels_selection.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args()
    if not args.table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run(args.out)
    print(table(read_rows(args.out)))


if __name__ == "__main__":
    main()
