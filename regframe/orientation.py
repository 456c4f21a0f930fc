"""Voxel-axis orientation: bring an image (and its labels, mask, keypoints) to a reference image's
axis order and directions by axis permutation and flips, without interpolation.

Two files of one physical image may store it with different axis orders or directions (RAS vs LPS
affines). Registration works on voxel arrays, so their axes must first agree: the array is permuted
and flipped and its affine updated so every voxel keeps its world position. Grids whose axes are not
parallel (an oblique rotation between them) are refused: that needs resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nibabel.orientations import apply_orientation, inv_ornt_aff

from regframe.errors import RegframeInputError
from regframe.io import Volume

TOLERANCE = 1e-3  # largest off-axis direction cosine still read as parallel axes


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis of a 4x4 affine, ``(3,)``."""
    return np.linalg.norm(affine[:3, :3], axis=0)


def axis_transform(affine: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """How array axes of ``affine`` map onto those of ``reference``, as a nibabel orientation
    transform ``(3, 2)`` (row ``i``: output axis of input axis ``i``, and ``-1`` for a flip), or
    ``None`` when the axes are not parallel up to permutation and flips (oblique)."""
    directions = affine[:3, :3] / voxel_spacing(affine)
    reference_directions = reference[:3, :3] / voxel_spacing(reference)
    cosines = np.linalg.solve(reference_directions, directions)  # column i: axis i in reference axes
    target = np.abs(cosines).argmax(axis=0)
    signs = np.sign(cosines[target, range(3)])
    signed_permutation = np.zeros((3, 3))
    signed_permutation[target, range(3)] = signs
    if len(set(target.tolist())) != 3 or np.abs(cosines - signed_permutation).max() > TOLERANCE:
        return None
    return np.stack([target, signs], axis=1).astype(float)


def _reoriented_affine(affine: np.ndarray, ornt: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Affine of the reoriented array: its voxels keep their world positions."""
    return affine @ inv_ornt_aff(ornt, shape)


def _transform_or_raise(affine: np.ndarray, reference: np.ndarray, path: Path | str,
                        reference_path: Path | str) -> np.ndarray:
    ornt = axis_transform(affine, reference)
    if ornt is None:
        raise RegframeInputError(
            f"{path}: axes are rotated against {reference_path} (not an axis permutation or flip); "
            "resample it onto that grid first")
    return ornt


@dataclass(frozen=True)
class Grid:
    """Where a volume's voxels are: its file, array ``shape`` and 4x4 ``affine`` (no voxel values)."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(volume.path, tuple(volume.array.shape), volume.affine)


def check_pair_grid(fixed: Grid, moving: Grid) -> None:
    """Raise unless ``moving``, brought to the orientation of ``fixed``, has its shape and spacing
    (registration maps voxel to voxel)."""
    ornt = _transform_or_raise(moving.affine, fixed.affine, moving.path, fixed.path)
    order = np.argsort(ornt[:, 0])  # input axis of each output axis
    shape = tuple(moving.shape[i] for i in order)
    spacing, fixed_spacing = voxel_spacing(moving.affine)[order], voxel_spacing(fixed.affine)
    if shape != fixed.shape:
        raise RegframeInputError(f"{moving.path}: shape {shape} (in the fixed orientation) differs from {fixed.path} "
                                 f"shape {fixed.shape}; resample both to one grid first")
    if not np.allclose(spacing, fixed_spacing, rtol=TOLERANCE):
        raise RegframeInputError(f"{moving.path}: spacing {tuple(spacing.round(4).tolist())} mm (in the fixed "
                                 f"orientation) differs from {fixed.path} spacing {tuple(fixed_spacing.round(4).tolist())} mm")


def reorient_volume(volume: Volume, reference: np.ndarray, reference_path: Path | str) -> Volume:
    """``volume`` with its array permuted/flipped to the axis order and directions of the
    ``reference`` affine (4x4); world positions unchanged. Oblique differences are an input error."""
    ornt = _transform_or_raise(volume.affine, reference, volume.path, reference_path)
    if (ornt == [[0, 1], [1, 1], [2, 1]]).all():
        return volume
    array = np.ascontiguousarray(apply_orientation(volume.array, ornt))
    return Volume(array, _reoriented_affine(volume.affine, ornt, volume.array.shape), volume.path)


def reorient_subject(subject: dict, reference: np.ndarray, path: Path | str, reference_path: Path | str) -> dict:
    """A subject dict (see :mod:`regframe.preprocess`: ``image``/``label``/``mask`` ``(1, *S)``,
    ``points`` ``(N, 3)`` voxels, ``spacing``, ``affine``) brought to the ``reference`` orientation."""
    ornt = _transform_or_raise(subject["affine"], reference, path, reference_path)
    if (ornt == [[0, 1], [1, 1], [2, 1]]).all():
        return subject
    shape = tuple(subject["image"].shape[1:])
    out = dict(subject)
    for key in ("image", "label", "mask"):
        if subject.get(key) is not None:
            out[key] = torch.from_numpy(np.ascontiguousarray(apply_orientation(subject[key][0].numpy(), ornt)))[None]
    out["affine"] = _reoriented_affine(subject["affine"], ornt, shape)
    out["spacing"] = torch.tensor(voxel_spacing(out["affine"]), dtype=subject["spacing"].dtype)
    if subject.get("points") is not None:  # new voxel -> old voxel is inv_ornt_aff; points go the other way
        to_new = np.linalg.inv(inv_ornt_aff(ornt, shape))
        points = subject["points"].numpy().astype(np.float64)
        moved = points @ to_new[:3, :3].T + to_new[:3, 3]
        out["points"] = torch.from_numpy(moved).to(subject["points"].dtype)
    return out
