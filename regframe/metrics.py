"""Registration metrics computed as the Learn2Reg challenge computes them, in 2D and 3D.

Inputs are torch tensors (numpy arrays are accepted too) on any device:

- label maps: integer ``(1, 1, *S)`` or ``(*S)``, background 0;
- displacements: ``(1, D, *S)`` or ``(D, *S)`` in **voxels** (regframe convention: channel ``i``
  along axis ``i``, backward map ``warped(x) = moving(x + u(x))``);
- ``spacing``: voxel size in mm per axis, ``(D,)``.

Differences from Learn2Reg's public evaluation code, on purpose and documented per function:
a label that vanishes after warping gets the grid diagonal as HD95 instead of ``inf``; TRE
samples the field linearly rather than with cubic splines; HD95 is also reported in mm.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage
from torch import Tensor

from regframe.points import fixed_to_moving
from regframe.spatial import jacobian_determinant, warp_labels

LabelLike = Tensor | np.ndarray
SpacingLike = Sequence[float] | Tensor | np.ndarray


def _label_grid(labels: LabelLike, name: str) -> Tensor:
    """Return a label map as an integer tensor of shape ``(*S)``."""
    labels = torch.as_tensor(labels)
    if labels.dim() in (4, 5) and labels.shape[:2] == (1, 1):
        labels = labels[0, 0]
    if labels.dim() not in (2, 3):
        raise ValueError(f"{name} must be (1, 1, *S) or (*S) with 2 or 3 spatial dims, got {tuple(labels.shape)}")
    if labels.is_floating_point():
        labels = labels.round()
    return labels.long()


def _batched_field(disp: Tensor | np.ndarray) -> Tensor:
    """Return a displacement as ``(1, D, *S)``."""
    disp = torch.as_tensor(disp)
    if disp.dim() in (4, 5) and disp.shape[0] == 1 and disp.shape[1] == disp.dim() - 2:
        return disp
    if disp.dim() in (3, 4) and disp.shape[0] == disp.dim() - 1:
        return disp.unsqueeze(0)
    raise ValueError(f"displacement must be (1, D, *S) or (D, *S) with D = 2 or 3, got {tuple(disp.shape)}")


def _spacing_list(spacing: SpacingLike | None, dims: int) -> list[float]:
    if spacing is None:
        return [1.0] * dims
    values = torch.as_tensor(spacing, dtype=torch.float64).flatten().tolist()
    if len(values) != dims or any(v <= 0 for v in values):
        raise ValueError(f"spacing must be {dims} positive values (mm per voxel), got {values}")
    return values


def labels_present(fixed_label: LabelLike, moving_label: LabelLike) -> list[int]:
    """Foreground labels (> 0) that occur in both the fixed and the (original, unwarped) moving map."""
    fixed = _label_grid(fixed_label, "fixed_label").flatten()
    moving = _label_grid(moving_label, "moving_label").flatten()
    if fixed.min() < 0 or moving.min() < 0:
        raise ValueError("label values must be non-negative")
    size = int(max(fixed.max().item(), moving.max().item())) + 1
    both = (torch.bincount(fixed, minlength=size) > 0) & (torch.bincount(moving.to(fixed.device), minlength=size) > 0)
    return [label for label in torch.nonzero(both).flatten().tolist() if label > 0]


def dice_per_label(fixed_label: LabelLike, warped_label: LabelLike, labels: Sequence[int]) -> dict[int, float]:
    """Dice ``2|F∩W| / (|F| + |W|)`` for each label in ``labels`` (in [0, 1]).

    ``bincount`` passes over the voxels (works on GPU tensors). A label absent from both maps gives
    NaN (0/0). Learn2Reg scores only labels present in the fixed and the original moving map:
    pass ``labels_present(fixed, moving)`` (as :func:`pair_metrics` does).
    """
    fixed = _label_grid(fixed_label, "fixed_label").flatten()
    warped = _label_grid(warped_label, "warped_label").flatten().to(fixed.device)
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed_label has {fixed.numel()} voxels, warped_label {warped.numel()}")
    labels = [int(label) for label in labels]
    if not labels:
        return {}
    if fixed.min() < 0 or warped.min() < 0 or min(labels) < 0:
        raise ValueError("label values must be non-negative")
    size = int(max(max(labels), fixed.max().item(), warped.max().item())) + 1
    count_fixed = torch.bincount(fixed, minlength=size)
    count_warped = torch.bincount(warped, minlength=size)
    overlap = torch.bincount(fixed[fixed == warped], minlength=size)
    index = torch.tensor(labels, device=fixed.device)
    dice = 2.0 * overlap[index].double() / (count_fixed[index] + count_warped[index]).double()
    return dict(zip(labels, dice.tolist()))


def hd95_per_label(fixed_label: LabelLike, warped_label: LabelLike, labels: Sequence[int],
                   spacing: SpacingLike | None = None) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance per label, in mm (``spacing``; voxels if None).

    Learn2Reg's definition (DeepMind ``surface_distance``, reproduced to float32 rounding): the
    surfaces are the surface elements of the marching-cubes neighbourhood codes on the voxel-corner
    grid (MONAI ``get_edge_surface_distance`` with ``use_subvoxels``), each weighted by its area
    (contour length in 2D). For each direction the distances from one surface to the nearest
    element of the other are sorted and the first one whose cumulative area reaches 95 % is taken;
    the larger direction is returned. (Learn2Reg passes unit spacing, i.e. reports voxels.)

    A label present in the fixed map but missing in the warped map (the organ vanished) gets the
    grid diagonal ``|(S - 1) * spacing|``, the largest distance the grid can hold: it penalises the
    failure instead of dropping it (NaN) or making every mean infinite (Learn2Reg's ``inf``).
    A label missing from the fixed map gives NaN. Runs on the CPU.
    """
    fixed = _label_grid(fixed_label, "fixed_label").cpu()
    warped = _label_grid(warped_label, "warped_label").cpu()
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed_label shape {tuple(fixed.shape)} differs from warped_label {tuple(warped.shape)}")
    labels = [int(label) for label in labels]
    if any(label <= 0 for label in labels):
        raise ValueError(f"HD95 labels must be foreground labels > 0, got {labels}")
    sp = _spacing_list(spacing, fixed.dim())
    diagonal = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(fixed.shape, sp)))
    fixed_boxes = _bounding_boxes(fixed, max(labels, default=0))
    warped_boxes = _bounding_boxes(warped, max(labels, default=0))
    result: dict[int, float] = {}
    for label in labels:
        box_fixed, box_warped = fixed_boxes[label - 1], warped_boxes[label - 1]
        if box_fixed is None:
            result[label] = float("nan")
        elif box_warped is None:
            result[label] = diagonal
        else:
            # union bounding box plus one voxel: surfaces and distances are unchanged, the search is cheap
            window = tuple(slice(max(min(f.start, w.start) - 1, 0), max(f.stop, w.stop) + 1)
                           for f, w in zip(box_fixed, box_warped))
            with warnings.catch_warnings():  # empty masks are excluded above; MONAI's own deprecation notice
                warnings.simplefilter("ignore")
                edges, distances, areas = get_edge_surface_distance(
                    warped[window] == label, fixed[window] == label, spacing=sp, use_subvoxels=True, symmetric=True)
            (edges_warped, edges_fixed), (warped_to_fixed, fixed_to_warped) = edges, distances
            result[label] = max(_area_weighted_percentile(fixed_to_warped, areas[1][edges_fixed], 95.0),
                                _area_weighted_percentile(warped_to_fixed, areas[0][edges_warped], 95.0))
    return result


def surface_distances_per_label(fixed_label: LabelLike, warped_label: LabelLike, labels: Sequence[int],
                                spacing: SpacingLike | None = None) -> dict[int, tuple[float, float]]:
    """``(Hausdorff distance, average surface distance)`` per label, in mm (``spacing``; voxels if None).

    MONAI's ``compute_hausdorff_distance`` (the maximum, symmetric) and
    ``compute_average_surface_distance`` (symmetric: the mean over both surfaces' points of the
    distance to the other surface), on voxel-centre boundaries, Euclidean. As in
    :func:`hd95_per_label`, a label present in the fixed map but missing in the warped map gets the
    grid diagonal for both; a label missing from the fixed map gives NaN. Runs on the CPU.
    """
    fixed = _label_grid(fixed_label, "fixed_label").cpu()
    warped = _label_grid(warped_label, "warped_label").cpu()
    if fixed.shape != warped.shape:
        raise ValueError(f"fixed_label shape {tuple(fixed.shape)} differs from warped_label {tuple(warped.shape)}")
    sp = _spacing_list(spacing, fixed.dim())
    diagonal = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(fixed.shape, sp)))
    result: dict[int, tuple[float, float]] = {}
    for label in (int(label) for label in labels):
        in_fixed, in_warped = (fixed == label)[None, None], (warped == label)[None, None]
        if not in_fixed.any():
            result[label] = (float("nan"), float("nan"))
        elif not in_warped.any():
            result[label] = (diagonal, diagonal)
        else:
            with warnings.catch_warnings():  # MONAI's own deprecation notice (always_return_as_numpy)
                warnings.simplefilter("ignore", FutureWarning)
                hd = compute_hausdorff_distance(in_warped, in_fixed, include_background=True, spacing=sp)
                asd = compute_average_surface_distance(in_warped, in_fixed, include_background=True,
                                                       symmetric=True, spacing=sp)
            result[label] = (hd.item(), asd.item())
    return result


def _area_weighted_percentile(distances: Tensor, areas: Tensor, percent: float) -> float:
    """Smallest distance whose cumulative surface-area fraction reaches ``percent`` (Learn2Reg rule)."""
    order = torch.argsort(distances)
    cumulative = torch.cumsum(areas[order].double(), 0) / areas.double().sum()
    index = int(torch.searchsorted(cumulative, torch.tensor(percent / 100.0, dtype=torch.float64)))
    return distances[order][min(index, distances.numel() - 1)].item()


def _bounding_boxes(labels: Tensor, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label 1..max_label (None where absent), in one pass over the voxels."""
    boxes = ndimage.find_objects(labels.numpy(), max_label=max_label)
    return boxes + [None] * (max_label - len(boxes))


def jacobian_metrics(disp: Tensor | np.ndarray) -> dict[str, float]:
    """Smoothness of a displacement ``(1, D, *S)`` / ``(D, *S)`` in voxels.

    ``det`` = determinant of ``J = I + ∇u`` by central differences ``[-0.5, 0, 0.5]``
    (``regframe.spatial.jacobian_determinant``), with 2 voxels cropped at every border as in
    Learn2Reg (their zero-padded stencil is wrong on the outer voxel, then they crop 2). Computed
    in the field's precision, at least float32 (Learn2Reg uses float64; the difference is ~1e-7,
    and float32 halves the time and memory of a full-size volume).

    - ``sdlogj_l2r``: ``std(log(clip(det + 3, 1e-9, 1e9)))``, Learn2Reg's leaderboard number
      (the ``+ 3`` is their quirk; it shrinks the value a lot, so never compare it with ``sdlogj``);
    - ``sdlogj``: ``std(log det)`` over the non-folded voxels ``det > 0`` (NaN if there are none);
    - ``fold_pct``: percentage of voxels with ``det <= 0``;
    - ``std_jac``: ``std(det)`` over all voxels, the "Std(Jac)" of the JRSS paper.

    Standard deviations are population (``ddof = 0``), like numpy's.
    """
    disp = _batched_field(disp)
    if not disp.is_floating_point() or torch.finfo(disp.dtype).bits < 32:
        disp = disp.float()
    dims = disp.shape[1]
    if min(disp.shape[2:]) < 5:
        raise ValueError(f"jacobian metrics need at least 5 voxels per axis, got grid {tuple(disp.shape[2:])}")
    det = jacobian_determinant(disp)[0][(slice(1, -1),) * dims].flatten()
    log_l2r = torch.log(torch.clamp(det + 3.0, 1e-9, 1e9)).double()  # statistics always in float64
    positive = det[det > 0]
    sdlogj = torch.log(positive).double().std(correction=0).item() if positive.numel() else float("nan")
    fold_pct = 100.0 * (det <= 0).double().mean()
    return {"sdlogj_l2r": log_l2r.std(correction=0).item(), "sdlogj": sdlogj, "fold_pct": fold_pct.item(),
            "std_jac": det.double().std(correction=0).item()}


def tre(fixed_points: Tensor | np.ndarray, moving_points: Tensor | np.ndarray, disp: Tensor | np.ndarray,
        spacing: SpacingLike | None = None) -> Tensor:
    """Target registration error per point, in mm: ``|(p_F + u(p_F) - p_M) * spacing|``.

    ``fixed_points`` / ``moving_points`` are ``(N, D)`` voxel coordinates (axis order as stored) on
    the fixed and moving grids, which share ``spacing``. ``u`` is sampled at the fixed points with
    (bi/tri)linear interpolation, clamped to the border (Learn2Reg samples with cubic splines;
    for smooth fields the difference is negligible). Returns ``(N,)`` float64.
    """
    field = _batched_field(disp)[0].double()
    dims = field.shape[0]
    fixed = torch.as_tensor(fixed_points, dtype=torch.float64, device=field.device)
    moving = torch.as_tensor(moving_points, dtype=torch.float64, device=field.device)
    if fixed.dim() != 2 or fixed.shape[1] != dims or fixed.shape != moving.shape:
        raise ValueError(f"points must both be (N, {dims}), got {tuple(fixed.shape)} and {tuple(moving.shape)}")
    scale = torch.tensor(_spacing_list(spacing, dims), dtype=torch.float64, device=field.device)
    return ((fixed_to_moving(field, fixed) - moving) * scale).norm(dim=1)


def pair_metrics(fixed_label: LabelLike, moving_label: LabelLike, disp: Tensor | np.ndarray,
                 spacing: SpacingLike | None = None, labels: Sequence[int] | None = None, hd95: bool = True,
                 warped_label: LabelLike | None = None, label_warp: str = "nearest",
                 fixed_points: Tensor | np.ndarray | None = None,
                 moving_points: Tensor | np.ndarray | None = None, surface_distances: bool = False) -> dict:
    """All metrics of one registered pair.

    ``moving_label`` is the original moving map (it decides which labels count); it is warped with
    ``disp`` (``label_warp`` = ``"nearest"`` or ``"onehot"``) unless ``warped_label`` is given.
    Labels evaluated: ``labels`` (default all foreground labels) restricted to those present in
    fixed and moving. Returns floats:

    ``dice`` (mean over labels, NaN if none), ``dice_per_label`` {label: Dice},
    ``hd95`` (mean mm), ``hd95_vox`` (mean voxels, Learn2Reg's unit), ``hd95_per_label`` {label: mm}
    — the HD95 keys only when ``hd95`` is True —, with ``surface_distances`` the Hausdorff distance
    and average surface distance (:func:`surface_distances_per_label`, means over labels) ``hd``,
    ``asd`` in voxels and ``hd_mm``, ``asd_mm`` in mm, ``sdlogj_l2r``, ``sdlogj``, ``fold_pct``, and
    ``tre`` (mean mm) when points are given.
    """
    field = _batched_field(disp)
    fixed = _label_grid(fixed_label, "fixed_label")
    moving = _label_grid(moving_label, "moving_label")
    dims = field.shape[1]
    if fixed.shape != field.shape[2:] or moving.shape != field.shape[2:]:
        raise ValueError(f"label grids {tuple(fixed.shape)}, {tuple(moving.shape)} must match the "
                         f"displacement grid {tuple(field.shape[2:])}")
    present = labels_present(fixed, moving)
    evaluated = present if labels is None else [int(label) for label in labels if int(label) in present]
    if warped_label is None:
        warped = warp_labels(moving.to(field.device)[None, None], field, method=label_warp)[0, 0]
    else:
        warped = _label_grid(warped_label, "warped_label")
    per_label = dice_per_label(fixed, warped, evaluated)
    result: dict = {"dice": _nanmean(per_label.values()), "dice_per_label": per_label}
    if hd95:
        sp = _spacing_list(spacing, dims)
        hd_mm = hd95_per_label(fixed, warped, evaluated, sp)
        if all(s == sp[0] for s in sp):  # isotropic: distances scale exactly
            hd_vox = {label: value / sp[0] for label, value in hd_mm.items()}
        else:
            hd_vox = hd95_per_label(fixed, warped, evaluated, None)
        result.update(hd95=_nanmean(hd_mm.values()), hd95_vox=_nanmean(hd_vox.values()), hd95_per_label=hd_mm)
    if surface_distances:
        for suffix, units in (("", None), ("_mm", _spacing_list(spacing, dims))):
            per_label = surface_distances_per_label(fixed, warped, evaluated, units)
            result[f"hd{suffix}"] = _nanmean(hd for hd, _ in per_label.values())
            result[f"asd{suffix}"] = _nanmean(asd for _, asd in per_label.values())
    result.update(jacobian_metrics(field))
    if fixed_points is not None and moving_points is not None:
        result["tre"] = tre(fixed_points, moving_points, field, spacing).mean().item()
    return result


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def aggregate(per_case: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """Summary over pairs of every scalar metric (nested per-label dicts are skipped).

    For each metric, NaN cases left out (like pandas): ``mean``, ``std`` (sample, ``ddof = 1``,
    NaN for one case), ``p30`` = 30th percentile with linear interpolation (what Learn2Reg's
    evaluation script writes as ``"30"``), and ``n`` cases. ``dice`` additionally gets
    ``low30_mean``: the mean of the lowest 30 % of per-case Dice (at least one case), the
    robustness score ("DSC30") of the Learn2Reg papers.
    """
    keys = [k for k in dict.fromkeys(k for case in per_case for k in case)
            if all(isinstance(case.get(k, float("nan")), (int, float)) and not isinstance(case.get(k), bool)
                   for case in per_case)]
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(case.get(key, float("nan"))) for case in per_case], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            summary[key] = {"mean": float("nan"), "std": float("nan"), "p30": float("nan"), "n": 0}
            continue
        stats = {"mean": float(values.mean()),
                 "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                 "p30": float(np.percentile(values, 30)),
                 "n": int(values.size)}
        if key == "dice":
            lowest = np.sort(values)[: max(1, math.ceil(0.3 * values.size))]
            stats["low30_mean"] = float(lowest.mean())
        summary[key] = stats
    return summary
