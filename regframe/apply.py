"""``regframe apply``: warp an image, a label map or a point set with a saved displacement field.

The field is ``disp.nii.gz`` as ``regframe register`` writes it: Learn2Reg layout (channel-last
``(X, Y, Z, 3)``, voxels) on the fixed grid, with the fixed image's affine. It is a backward map,
``warped(x) = moving(x + u(x))``, so:

- images (linear) and label maps (nearest, or ``--label-interp onehot``: linear on the one-hot
  encoding, then arg-max) must lie on the moving grid; the result lies on the fixed grid and is
  written with the fixed affine;
- points on the fixed grid (``--points-space fixed``) map to the moving grid as ``x + u(x)``;
  points on the moving grid (``--points-space moving``) map to the fixed grid by inverting that
  (fixed-point iteration ``x_{k+1} = y - u(x_k)``, see :func:`regframe.points.moving_to_fixed`).

The moving grid is the moving image's grid (``--moving-grid MOVING_IMAGE``). Without it, an image or
label map must lie exactly on the fixed grid (shape and affine of the field file, the Learn2Reg
case of one grid for all subjects); anything else is refused, never resampled silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regframe.errors import RegframeInputError
from regframe.io import Volume, read_displacement, read_image, read_label, write_nifti
from regframe.learn2reg import read_keypoints
from regframe.orientation import reorient_volume, voxel_spacing
from regframe.points import fixed_to_moving, moving_to_fixed, voxel_to_world, world_to_voxel
from regframe.spatial import warp, warp_labels

AFFINE_TOLERANCE = 1e-3  # mm (translation) and dimensionless (direction x spacing) per affine entry
INVERSE_TOLERANCE = 1e-3  # voxels: moving-to-fixed points with a larger residual are reported


class Field:
    """A Learn2Reg displacement file: ``disp (3, *S)`` in voxels on the fixed grid, the fixed ``affine``."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise RegframeInputError(f"{path}: displacement file not found")
        try:
            header = nib.load(str(path))
            shape, self.affine = tuple(header.shape), np.asarray(header.affine, dtype=np.float64)
        except Exception as err:  # nibabel raises many types for non-NIfTI or truncated files
            raise RegframeInputError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from err
        if len(shape) != 4 or shape[-1] != 3:
            raise RegframeInputError(f"{path}: expected a 3-D displacement (X, Y, Z, 3) in Learn2Reg layout "
                                     f"(channel-last, voxels), got shape {shape}")
        self.path = path
        self.shape = shape[:3]
        self.disp = read_displacement(path, self.shape)

    @property
    def spacing(self) -> np.ndarray:
        return voxel_spacing(self.affine)


def _directions(affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] / voxel_spacing(affine)


def check_moving_grid(field: Field, grid: Volume) -> None:
    """A moving image can belong to this field only if it has the fixed grid's shape, spacing and
    axis directions (``regframe register`` registers only such pairs; its origin may differ)."""
    if grid.array.shape != field.shape:
        raise RegframeInputError(f"{grid.path}: --moving-grid shape {grid.array.shape} differs from the field "
                                 f"{field.path} grid {field.shape}")
    if not np.allclose(grid.spacing, field.spacing, rtol=1e-3):
        raise RegframeInputError(f"{grid.path}: --moving-grid spacing {tuple(np.round(grid.spacing, 4))} differs "
                                 f"from the field {field.path} spacing {tuple(np.round(field.spacing, 4))}")
    if not np.allclose(_directions(grid.affine), _directions(field.affine), atol=AFFINE_TOLERANCE):
        raise RegframeInputError(f"{grid.path}: --moving-grid axis directions differ from the field {field.path} "
                                 "(another orientation); the field's voxels cannot be mapped onto this grid")


def check_on_grid(volume: Volume, shape: tuple[int, ...], affine: np.ndarray, grid_name: str, hint: str = "") -> None:
    """Raise unless ``volume`` has exactly ``shape`` and ``affine`` (to ``AFFINE_TOLERANCE``); ``hint``
    ends the affine error."""
    if volume.array.shape != shape:
        raise RegframeInputError(f"{volume.path}: shape {volume.array.shape} differs from the {grid_name} {shape}")
    if not np.allclose(volume.affine, affine, rtol=0, atol=AFFINE_TOLERANCE):
        difference = float(np.abs(volume.affine - affine).max())
        raise RegframeInputError(f"{volume.path}: affine differs from the {grid_name} by up to {difference:.4g}{hint}")


def warp_image(field: Field, image: Volume) -> np.ndarray:
    """Image on the moving grid resampled onto the fixed grid (trilinear), ``(X, Y, Z)`` float32."""
    return warp(torch.from_numpy(image.array)[None, None], field.disp[None])[0, 0].numpy()


def warp_label_map(field: Field, labels: Volume, interpolation: str) -> np.ndarray:
    """Label map on the moving grid resampled onto the fixed grid (``nearest`` or ``onehot``), integer."""
    array = labels.array
    if interpolation == "onehot" and array.min() < 0:
        raise RegframeInputError(f"{labels.path}: --label-interp onehot needs non-negative label values")
    warped = warp_labels(torch.from_numpy(array)[None, None], field.disp[None], method=interpolation)[0, 0].numpy()
    dtype = np.result_type(np.min_scalar_type(int(array.min())), np.min_scalar_type(int(array.max())))
    return warped.astype(dtype)


def map_points(field: Field, points: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Voxel ``points (N, 3)`` on the ``space`` (``fixed`` or ``moving``) grid mapped to the other grid;
    also the inversion residual in voxels (``None`` for fixed-space points)."""
    if space == "fixed":
        return fixed_to_moving(field.disp, points), None
    inversion = moving_to_fixed(field.disp, points)
    return inversion.points, inversion.residual


def _check_output(out: Path, overwrite: bool, inputs: list[Path], points: bool) -> None:
    if out.is_dir():
        raise RegframeInputError(f"{out}: --out is a folder; give a file name")
    if not points and not out.name.lower().endswith((".nii", ".nii.gz")):
        raise RegframeInputError(f"{out}: --out must be a NIfTI file (.nii or .nii.gz)")
    if points and out.suffix.lower() != ".csv":
        raise RegframeInputError(f"{out}: --out for --points must be a .csv file")
    if any(out.resolve() == path.resolve() for path in inputs):
        raise RegframeInputError(f"{out}: --out is one of the inputs; choose another file")
    if out.exists() and not overwrite:
        raise RegframeInputError(f"{out}: output exists; pass --overwrite to replace it")


def _check_options(args: argparse.Namespace) -> None:
    """Options that only make sense for one kind of input."""
    if args.labels is None:
        for option, value in (("--label-interp", args.label_interp), ("--label-channel", args.label_channel)):
            if value is not None:
                raise RegframeInputError(f"{option} applies to --labels only")
    if args.points is None:
        for option, value in (("--points-space", args.points_space), ("--points-units", args.points_units)):
            if value is not None:
                raise RegframeInputError(f"{option} applies to --points only")
    elif args.points_units == "mm" and args.moving_grid is None:
        raise RegframeInputError("--points-units mm needs --moving-grid MOVING_IMAGE (its affine converts "
                                 "moving-grid points to and from mm)")


def _write_points(path: Path, points: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    np.savetxt(tmp, points.numpy(), delimiter=",", fmt="%.6f")
    tmp.replace(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``regframe apply``."""
    parser.description = ("Warp an image, label map or point set with a displacement written by regframe register "
                          "(disp.nii.gz: backward map on the fixed grid, warped(x) = moving(x + u(x))).")
    parser.add_argument("disp", type=Path, help="displacement file (Learn2Reg layout: X,Y,Z,3 voxels, fixed affine)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", type=Path, help="image on the moving grid: resampled linearly onto the fixed grid")
    what.add_argument("--labels", type=Path, help="label map on the moving grid: resampled onto the fixed grid")
    what.add_argument("--points", type=Path, help="CSV of points, one per row (x,y,z; no header)")
    parser.add_argument("--out", type=Path, required=True, help="output NIfTI (image, labels) or CSV (points)")
    parser.add_argument("--moving-grid", type=Path, default=None,
                        help="the moving image of the registration; --image/--labels must lie on its grid "
                             "(default: they must lie on the field's fixed grid)")
    parser.add_argument("--label-interp", choices=("nearest", "onehot"), default=None,
                        help="labels: nearest voxel (default) or linear on the one-hot encoding, then arg-max")
    parser.add_argument("--label-channel", type=int, default=None,
                        help="labels: channel of a 4-D (one-hot / binary) label file to warp")
    parser.add_argument("--points-space", choices=("fixed", "moving"), default=None,
                        help="points: grid the points lie on (default fixed): fixed -> moving as x + u(x); "
                             "moving -> fixed by inverting the field")
    parser.add_argument("--points-units", choices=("voxel", "mm"), default=None,
                        help="points: voxel indices (default) or world mm through the affine of the grid they lie on; "
                             "the output uses the same units")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def apply_points(args: argparse.Namespace, field: Field, moving_affine: np.ndarray) -> None:
    """Map the ``--points`` CSV to the other grid and write it (same units); warn about points the
    inversion did not resolve."""
    points = read_keypoints(args.points)
    space = args.points_space or "fixed"
    source_affine, target_affine = (field.affine, moving_affine) if space == "fixed" else (moving_affine, field.affine)
    mm = args.points_units == "mm"
    mapped, residual = map_points(field, world_to_voxel(source_affine, points) if mm else points.double(), space)
    _write_points(args.out, voxel_to_world(target_affine, mapped) if mm else mapped)
    if residual is not None and bool((residual > INVERSE_TOLERANCE).any()):
        print(f"regframe apply: warning: {int((residual > INVERSE_TOLERANCE).sum())} of {len(residual)} points "
              f"did not invert to {INVERSE_TOLERANCE} voxels (largest residual {residual.max().item():.3g}); "
              "the field may fold or leave the grid there", file=sys.stderr)
    print(f"{len(points)} {space}-grid points mapped to the {'moving' if space == 'fixed' else 'fixed'} grid: {args.out}")


def oriented(volume: Volume, field: Field, moving_grid: Path | None) -> Volume:
    """A volume on the moving grid, brought to the field's axis order and directions (no
    interpolation); without ``--moving-grid`` the volume must lie on the fixed grid as stored."""
    return volume if moving_grid is None else reorient_volume(volume, field.affine, field.path)


def main(args: argparse.Namespace) -> int:
    """Check every input and the output first, then warp and write; bad input raises ``RegframeInputError``."""
    _check_options(args)
    source = args.image or args.labels or args.points
    inputs = [args.disp, source] + ([args.moving_grid] if args.moving_grid else [])
    _check_output(args.out, args.overwrite, inputs, points=args.points is not None)
    field = Field(args.disp)
    if args.moving_grid is None:  # volumes to warp must then lie on the fixed grid itself
        affine, grid_name = field.affine, f"field's fixed grid ({field.path})"
        hint = "; pass --moving-grid MOVING_IMAGE if it lies on the moving image's grid"
    else:  # a moving grid stored in another axis order/direction is reoriented, as `register` does
        stored = read_image(args.moving_grid)
        moving_grid = reorient_volume(stored, field.affine, field.path)
        if moving_grid is not stored and args.points is not None and args.points_units == "voxel":
            raise RegframeInputError(f"{stored.path}: stored in another orientation than the field {field.path}; "
                                     "give the points in world coordinates (--points-units mm)")
        check_moving_grid(field, moving_grid)
        affine, grid_name, hint = moving_grid.affine, f"--moving-grid {moving_grid.path}", ""
    if args.points is not None:
        apply_points(args, field, affine)
        return 0
    if args.image is not None:
        volume = oriented(read_image(args.image), field, args.moving_grid)
        check_on_grid(volume, field.shape, affine, grid_name, hint)
        warped = warp_image(field, volume)
    else:
        volume = oriented(read_label(args.labels, channel=args.label_channel), field, args.moving_grid)
        check_on_grid(volume, field.shape, affine, grid_name, hint)
        warped = warp_label_map(field, volume, args.label_interp or "nearest")
    write_nifti(args.out, warped, field.affine)
    print(f"warped onto the fixed grid of {args.disp}: {args.out}")
    return 0
