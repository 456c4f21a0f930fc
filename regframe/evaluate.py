"""``regframe evaluate``: score Learn2Reg displacement files against a ``{Task}_dataset.json``.

For every ``registration_val`` pair the fixed and moving label maps are read, the moving labels
warped with ``DIR/disp_{fixed}_{moving}.nii.gz`` (nearest neighbour; channel-last voxels, the
Learn2Reg submission format) and scored with :func:`regframe.metrics.pair_metrics` over the labels
the json lists (``--label-channel`` picks one channel of 4-D label files). Where the subjects have
keypoints (``keypointsTr/*.csv``, voxels) the TRE in mm is computed too (``tre``), and at landmarks
(``landmarksTr/*.csv``, e.g. LungCT's expert landmarks: ``tre_landmarks``); pairs with points but no
labels (e.g. LungCT) get TRE and the Jacobian metrics. The result (per-case metrics, label names,
aggregates) is written as JSON and shown as a table.

The dataset file is parsed by :func:`regframe.learn2reg.load_dataset_json`, the same parser
the data modules and ``regframe register --dataset`` use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from regframe.errors import RegframeInputError
from regframe.io import Volume, check_same_grid, read_displacement, read_image, read_label
from regframe.label_groups import LABEL_GROUPS, grouped_dice, named_groups
from regframe.learn2reg import PairEntry, SubjectEntry, label_ids, load_dataset_json, read_keypoints
from regframe.metrics import aggregate, jacobian_metrics, pair_metrics, tre
from regframe.spatial import warp_labels


def displacement_name(pair: PairEntry) -> str:
    """Learn2Reg submission file name of a ``PairEntry``, e.g. ``disp_0021_0022.nii.gz``."""
    return f"disp_{pair.pair_id}.nii.gz"


POINT_SETS = {"keypoints": "tre", "landmarks": "tre_landmarks"}  # SubjectEntry field -> metric (mm)


def _check_pairs(dataset_json: Path, pairs: list[PairEntry]) -> dict[str, dict[Path, torch.Tensor]]:
    """Check before any scoring that every pair can be scored (labels on both sides, or keypoints or
    landmarks on both sides) and read all point sets: ``{"keypoints" | "landmarks": {image path: (N, 3)
    voxel points}}`` (keyed by image, not subject id: LungCT's two scans of one patient share the id)."""
    points: dict[str, dict[Path, torch.Tensor]] = {kind: {} for kind in POINT_SETS}
    for pair in pairs:
        sides = (pair.fixed, pair.moving)
        for kind, read in points.items():
            fixed_file, moving_file = getattr(pair.fixed, kind), getattr(pair.moving, kind)
            if (fixed_file is None) != (moving_file is None):
                present, absent = sides if fixed_file is not None else sides[::-1]
                raise RegframeInputError(f"{getattr(present, kind)}: {kind} found, but none for {absent.image} "
                                         f"(pair {pair.pair_id}); TRE needs both")
            if fixed_file is not None:
                for entry in sides:
                    read.setdefault(entry.image, read_keypoints(getattr(entry, kind)))
                if read[pair.fixed.image].shape != read[pair.moving.image].shape:
                    raise RegframeInputError(
                        f"{moving_file}: {tuple(read[pair.moving.image].shape)} {kind} do not correspond "
                        f"to {fixed_file} {tuple(read[pair.fixed.image].shape)}")
        has_points = any(pair.fixed.image in read for read in points.values())
        if not has_points and (pair.fixed.label is None or pair.moving.label is None):
            entry = pair.fixed if pair.fixed.label is None else pair.moving
            raise RegframeInputError(f"{dataset_json}: no label file and no keypoints or landmarks known for "
                                     f"{entry.image}")
    return points


def evaluate_dataset(dataset_json: str | Path, disp_dir: str | Path, out: str | Path | None = None,
                     allow_missing: bool = False, hd95: bool = True, label_channel: int | None = None,
                     progress: bool = False, label_groups: str | None = None) -> dict:
    """Evaluate every ``registration_val`` pair of ``dataset_json`` with the fields in ``disp_dir``.

    A missing ``disp_*.nii.gz`` raises :class:`RegframeInputError` naming it, unless
    ``allow_missing``: then the zero field is used (pre-registration scores) and the case is
    marked ``"missing": true``. Label maps give Dice and HD95 over the labels the json lists in
    ``labels`` (all foreground labels when it lists none; ids found in the files but not listed
    are reported in ``unlisted_labels``); ``label_channel`` picks one channel of 4-D label files.
    Subjects with keypoints (``keypointsTr/*.csv``, voxels; fixed ``x``, moving ``y``) give the
    TRE ``|x + u(x) - y|`` in mm (mean over a pair's points), landmarks (``landmarksTr/*.csv``) the same
    as ``tre_landmarks``. ``label_groups`` names a grouping of :data:`regframe.label_groups.LABEL_GROUPS`
    (e.g. ``"lpba40"``): each group's codes are merged and scored as one label (``dice_groups``, and
    their mean ``dice_grouped``). ``progress`` shows a progress bar
    (on a terminal only). Returns (and writes to ``out`` atomically, if given)::

        {"task", "dataset", "disp_dir", "labels": {id: name}, "unlisted_labels": [id], "hd95": bool,
         "cases": [{"pair", "fixed", "moving", "disp", "missing", "dice", "dice_per_label": {name: Dice},
                    "dice_groups": {group: Dice}, "dice_grouped",
                    "hd95", "hd95_vox", "hd95_per_label": {name: mm}, "sdlogj_l2r", "sdlogj", "fold_pct",
                    "tre", "tre_landmarks", "seconds"}, ...],
         "aggregate": {metric: {"mean", "std", "p30", "n"[, "low30_mean"]}}}

    Units: Dice in [0, 1], HD95 and TRE in mm (``hd95_vox`` in voxels, as Learn2Reg reports it),
    fold in %. NaN is written as ``null``; label metrics are absent for pairs without labels.
    """
    dataset_json = Path(dataset_json)
    disp_dir = Path(disp_dir)
    groups = named_groups(label_groups) if label_groups is not None else None
    spec = load_dataset_json(dataset_json)
    if not spec.registration_val:
        raise RegframeInputError(f"{dataset_json}: no 'registration_val' pairs to evaluate")
    names = spec.label_names
    pairs = spec.registration_val
    files = [disp_dir / displacement_name(pair) for pair in pairs]
    missing = [path for path in files if not path.is_file()]
    if missing and not allow_missing:
        raise RegframeInputError(f"{missing[0]}: displacement file not found ({len(missing)} of {len(files)} "
                                 "missing; pass --allow-missing to score them as zero fields)")
    point_sets = _check_pairs(dataset_json, pairs)
    keypoints = point_sets["keypoints"]
    volumes: dict[Path, tuple[Volume, torch.Tensor | None]] = {}
    unlisted: set[int] = set()

    def grid_of(entry: SubjectEntry) -> tuple[Volume, torch.Tensor | None]:
        """The subject's label map (and its tensor), or its image (no labels) for the grid alone."""
        if entry.image not in volumes:
            if entry.label is None:
                volumes[entry.image] = (read_image(entry.image), None)
            else:
                volume = read_label(entry.label, channel=label_channel)
                if names:
                    unlisted.update(set(label_ids(volume.array)) - {0, *names})
                volumes[entry.image] = (volume, torch.from_numpy(volume.array))
        return volumes[entry.image]

    cases = []
    for pair, disp_path in track(list(zip(pairs, files)), description="evaluate", disable=not progress,
                                 console=Console(stderr=True), transient=True):
        start = time.perf_counter()
        fixed_volume, fixed_label = grid_of(pair.fixed)
        moving_volume, moving_label = grid_of(pair.moving)
        check_same_grid(fixed_volume, moving_volume)
        shape = tuple(fixed_volume.array.shape)
        is_missing = not disp_path.is_file()
        disp = torch.zeros(len(shape), *shape) if is_missing else read_displacement(disp_path, shape)
        points = (keypoints[pair.fixed.image], keypoints[pair.moving.image]) if pair.fixed.image in keypoints else (None, None)
        if fixed_label is not None and moving_label is not None:
            warped = warp_labels(moving_label[None, None], disp[None], method="nearest")
            metrics = pair_metrics(fixed_label, moving_label, disp, fixed_volume.spacing, hd95=hd95,
                                   labels=sorted(names) or None, warped_label=warped,
                                   fixed_points=points[0], moving_points=points[1])
            if groups is not None:
                metrics["dice_groups"] = grouped_dice(fixed_label, warped[0, 0], groups)
                metrics["dice_grouped"] = (sum(metrics["dice_groups"].values()) / len(metrics["dice_groups"])
                                           if metrics["dice_groups"] else math.nan)
        else:
            metrics = jacobian_metrics(disp)
            if points[0] is not None:
                metrics["tre"] = tre(points[0], points[1], disp, fixed_volume.spacing).mean().item()
        landmarks = point_sets["landmarks"]
        if pair.fixed.image in landmarks:
            metrics["tre_landmarks"] = tre(landmarks[pair.fixed.image], landmarks[pair.moving.image], disp,
                                           fixed_volume.spacing).mean().item()
        case = {"pair": pair.pair_id, "fixed": str(pair.fixed.image), "moving": str(pair.moving.image),
                "disp": str(disp_path), "missing": is_missing}
        for key, value in metrics.items():
            case[key] = ({names.get(label, str(label)): v for label, v in value.items()}
                         if isinstance(value, dict) else value)
        case["seconds"] = time.perf_counter() - start
        cases.append(case)
    result = {"task": spec.name, "dataset": str(dataset_json), "disp_dir": str(disp_dir),
              "labels": {str(k): v for k, v in names.items()}, "unlisted_labels": sorted(unlisted), "hd95": hd95,
              "cases": cases,
              "aggregate": aggregate([{k: v for k, v in c.items() if k != "seconds"} for c in cases])}
    result = _nan_to_none(result)
    if out is not None:
        _write_json(Path(out), result)
    return result


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def _cell(value, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def format_table(result: dict) -> str:
    """Readable table: one row per pair (Dice, grouped Dice, HD95 mm, TRE mm at keypoints and landmarks,
    SDlogJ, SDlogJ L2R, Std(Jac), fold %; the metrics computed), then mean/std/p30, and which labels were scored."""
    columns = [("dice", "dice", ".4f", 7), ("dice_grouped", "dice grp", ".4f", 8), ("hd95", "hd95 mm", ".2f", 8),
               ("tre", "tre mm", ".3f", 7), ("tre_landmarks", "tre lm mm", ".3f", 9),
               ("sdlogj", "sdlogj", ".4f", 7), ("sdlogj_l2r", "sdlogj_l2r", ".4f", 10),
               ("std_jac", "std jac", ".4f", 7), ("fold_pct", "fold %", ".3f", 7)]
    columns = [c for c in columns if c[0] in result["aggregate"]]
    pair_width = max([10] + [len(c["pair"]) + 1 for c in result["cases"]])
    lines = [f"{result['task']}: {len(result['cases'])} pairs, displacements from {result['disp_dir']}",
             f"{'pair':<{pair_width}}" + "".join(f" {title:>{w}}" for _, title, _, w in columns)]
    for case in result["cases"]:
        name = case["pair"] + ("*" if case.get("missing") else "")
        lines.append(f"{name:<{pair_width}}" + "".join(" " + _cell(case.get(k), f, w) for k, _, f, w in columns))
    for stat in ("mean", "std", "p30"):
        lines.append(f"{stat:<{pair_width}}" + "".join(
            " " + _cell(result["aggregate"].get(k, {}).get(stat), f, w) for k, _, f, w in columns))
    if "dice" in result["aggregate"]:
        lines.append(f"lowest 30% of pairs, mean Dice: {result['aggregate']['dice'].get('low30_mean', 0.0):.4f}")
        lines.append(_scored_labels(result))
    if any(case.get("missing") for case in result["cases"]):
        lines.append("* no displacement file: scored with the zero field (pre-registration)")
    return "\n".join(lines)


def _scored_labels(result: dict) -> str:
    """One line saying which labels Dice and HD95 cover."""
    if not result["labels"]:
        return "labels scored: every foreground label (the dataset json lists none)"
    line = f"labels scored: the {len(result['labels'])} listed in the dataset json"
    if result["unlisted_labels"]:
        line += f"; ids {result['unlisted_labels']} in the label files are not listed there and not scored"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``regframe evaluate``."""
    parser.add_argument("--dataset", required=True, type=Path, help="Learn2Reg {Task}_dataset.json")
    parser.add_argument("--disp-dir", required=True, type=Path,
                        help="folder with disp_{fixed}_{moving}.nii.gz (channel-last, voxels)")
    parser.add_argument("--out", type=Path, default=None, help="write per-case and aggregate metrics here (JSON)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score pairs without a displacement file with the zero field instead of failing")
    parser.add_argument("--no-hd95", dest="hd95", action="store_false", help="skip HD95 (the slowest metric)")
    parser.add_argument("--label-channel", type=int, default=None,
                        help="channel of 4-D (one-hot / binary, channel-last) label files to score")
    parser.add_argument("--label-groups", choices=sorted(LABEL_GROUPS), default=None,
                        help="also score groups of labels merged into one (lpba40: 5 regions + 5 structures)")


def main(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table; exit status 2 on bad input."""
    try:
        result = evaluate_dataset(args.dataset, args.disp_dir, out=args.out, allow_missing=args.allow_missing,
                                  hd95=args.hd95, label_channel=args.label_channel, progress=sys.stderr.isatty(),
                                  label_groups=args.label_groups)
    except RegframeInputError as err:
        print(f"regframe evaluate: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out is not None:
        print(f"metrics written to {args.out}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m regframe.evaluate", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
