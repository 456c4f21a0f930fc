"""NIfTI input/output that keeps affines and never reorients, with errors that name the file.

Arrays keep the axis order stored on disk (the regframe convention), so a displacement written
here lines up voxel-for-voxel with the fixed image it was computed on. nibabel is used directly
rather than torchio's readers because those go through SimpleITK and may reorient on read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regframe.errors import RegframeInputError


@dataclass
class Volume:
    """An image or label array as stored on disk, with its voxel-to-world ``affine`` (4x4)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each stored axis."""
        dims = min(self.array.ndim, 3)
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :dims], axis=0))


def _load(path: str | Path) -> tuple[np.ndarray, np.ndarray, Path]:
    path = Path(path)
    if not path.is_file():
        raise RegframeInputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for truncated or non-NIfTI files
        raise RegframeInputError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from err
    return array, np.asarray(img.affine, dtype=np.float64), path


def read_image(path: str | Path, spatial_dims: int = 3) -> Volume:
    """Read a scalar image as float32; rejects extra dimensions and non-finite values."""
    array, affine, path = _load(path)
    array = _squeeze_to(array, spatial_dims, path, "image")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise RegframeInputError(f"{path}: image contains {bad} NaN/Inf voxels")
    return Volume(array, affine, path)


def read_label(path: str | Path, spatial_dims: int = 3, channel: int | None = None) -> Volume:
    """Read an integer label map. A multi-channel (one-hot / binary) file needs ``channel``: that
    channel is returned as a 0/1 map."""
    array, affine, path = _load(path)
    if array.ndim == spatial_dims + 1 and array.shape[-1] > 1:
        if channel is None:
            raise RegframeInputError(
                f"{path}: label file has {array.shape[-1]} channels (shape {array.shape}); "
                "set label_channel to choose one")
        if not 0 <= channel < array.shape[-1]:
            raise RegframeInputError(f"{path}: label_channel {channel} out of range for {array.shape[-1]} channels")
        array = array[..., channel] > 0.5
    array = _squeeze_to(array, spatial_dims, path, "label map")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise RegframeInputError(f"{path}: label map contains NaN/Inf")
        if not np.allclose(array, np.round(array)):
            raise RegframeInputError(f"{path}: label map has non-integer values")
    return Volume(np.round(array).astype(np.int64), affine, path)


def _squeeze_to(array: np.ndarray, spatial_dims: int, path: Path, what: str) -> np.ndarray:
    while array.ndim > spatial_dims and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != spatial_dims:
        raise RegframeInputError(f"{path}: expected a {spatial_dims}-D {what}, got shape {array.shape}")
    return array


def check_same_grid(a: Volume, b: Volume) -> None:
    """Raise if two volumes (e.g. an image and its label map) are not on the same voxel grid."""
    if a.array.shape != b.array.shape:
        raise RegframeInputError(f"{b.path}: shape {b.array.shape} does not match {a.path} shape {a.array.shape}")
    if not np.allclose(a.spacing, b.spacing, rtol=1e-3):
        raise RegframeInputError(f"{b.path}: spacing {b.spacing} does not match {a.path} spacing {a.spacing}")


def write_nifti(path: str | Path, array: np.ndarray | torch.Tensor, affine: np.ndarray) -> Path:
    """Write an array with ``affine`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(tmp))
    tmp.replace(path)
    return path


def write_displacement(path: str | Path, disp: torch.Tensor, affine: np.ndarray) -> Path:
    """Write a displacement ``(D, *S)`` in voxels as a Learn2Reg file: channel-last ``(*S, D)`` float32."""
    if disp.dim() < 2 or disp.shape[0] != disp.dim() - 1:
        raise ValueError(f"displacement must be (D, *S) with D spatial dims, got {tuple(disp.shape)}")
    return write_nifti(path, disp.detach().float().movedim(0, -1).cpu().numpy(), affine)


def read_displacement(path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
    """Read a Learn2Reg displacement file and return ``(D, *shape)`` in voxels."""
    array, _, path = _load(path)
    dims = len(shape)
    if array.shape != (*shape, dims):
        raise RegframeInputError(f"{path}: displacement shape {array.shape} should be {(*shape, dims)} (channel-last, voxels)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise RegframeInputError(f"{path}: displacement contains NaN/Inf")
    return torch.from_numpy(np.moveaxis(array, -1, 0).copy())
