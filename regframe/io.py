"""Image, label and displacement files: read through torchio (NIfTI ``.nii``/``.nii.gz``, NRRD
``.nrrd``/``.nhdr``, MetaImage ``.mha``/``.mhd``), written as NIfTI; affines kept, never reoriented
here (:mod:`regframe.orientation` does that), errors name the file.

Arrays keep the axis order stored on disk (the regframe convention), so a displacement written
here lines up voxel for voxel with the fixed image it was computed on. NIfTI files are read by
nibabel inside torchio (its ``reader=`` hook): SimpleITK's NIfTI reader replaces an sform it finds
"unexpectedly scaled" by the qform (the ACDC files: affines 4-9 mm apart) and rounds rotated
affines through direction cosines (1e-7), so only nibabel returns the stored affine exactly. NRRD
and MetaImage files go through torchio's SimpleITK reader (affine in RAS world coordinates, as
nibabel gives for NIfTI).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from regframe.errors import RegframeInputError

FORMATS = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
           ".mhd": "MetaImage"}


@dataclass
class Volume:
    """A 3-D image or label array ``(X, Y, Z)`` as stored on disk, with its voxel-to-world
    ``affine`` (4x4, mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each stored axis."""
        dims = min(self.array.ndim, 3)
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :dims], axis=0))


def image_stem(path: Path) -> str | None:
    """File name without its image suffix (``case1.nii.gz`` -> ``case1``); ``None`` for other files."""
    for suffix in FORMATS:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _format(path: Path) -> str:
    """Format name of ``path`` from its suffix; other suffixes are an input error."""
    stem = image_stem(path)
    if stem is None:
        raise RegframeInputError(f"{path}: unsupported file type; expected one of {', '.join(FORMATS)}")
    return FORMATS[path.name[len(stem):].lower()]


def _nifti_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The array exactly as nibabel reads it (stored axes, scaling applied) and its float64 affine."""
    image = nib.load(str(path), mmap=False)
    return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def _read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """torchio reader for NIfTI: ``(C, X, Y, Z)`` (a 4-D file's last axis is the channel) and affine."""
    array, affine = _nifti_array(path)
    if array.ndim == 3:
        return array[None], affine
    if array.ndim == 4:
        return np.moveaxis(array, -1, 0), affine
    raise ValueError(f"expected a 3-D volume or 4-D channel-last file, got shape {array.shape}")


def _load(path: str | Path, kind: type[tio.Image]) -> tuple[torch.Tensor, np.ndarray, Path]:
    """Read ``path`` as a torchio ``kind`` (ScalarImage / LabelMap): data ``(C, X, Y, Z)``, affine."""
    path = Path(path)
    if not path.is_file():
        raise RegframeInputError(f"{path}: file not found")
    format_name = _format(path)
    try:
        with warnings.catch_warnings():  # torchio warns before its own fallbacks; failures raise below
            warnings.simplefilter("ignore")
            image = kind(path, reader=_read_nifti) if format_name == "NIfTI" else kind(path)
            image.load()
    except Exception as err:  # the readers raise many types for truncated or foreign files
        raise RegframeInputError(f"{path}: cannot read as {format_name} ({type(err).__name__}: {err})") from err
    return image.data, np.asarray(image.affine, dtype=np.float64), path


def read_image(path: str | Path) -> Volume:
    """Read a single-channel 3-D scalar image as float32; rejects extra channels and NaN/Inf."""
    data, affine, path = _load(path, tio.ScalarImage)
    if data.shape[0] != 1:
        raise RegframeInputError(f"{path}: expected a 3-D image, got shape {tuple(data.shape[1:])} "
                                 f"with {data.shape[0]} channels")
    array = data[0].numpy().astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise RegframeInputError(f"{path}: image contains {bad} NaN/Inf voxels")
    return Volume(array, affine, path)


def read_label(path: str | Path, channel: int | None = None) -> Volume:
    """Read an integer 3-D label map (int64). A multi-channel (one-hot / binary) file needs
    ``channel``: that channel is returned as a 0/1 map."""
    data, affine, path = _load(path, tio.LabelMap)
    channels = data.shape[0]
    if channels > 1:
        if channel is None:
            raise RegframeInputError(
                f"{path}: label file has {channels} channels (shape {(*data.shape[1:], channels)}); "
                "choose one with `label_channel` (data modules) or `--label-channel` (regframe evaluate, apply)")
        if not 0 <= channel < channels:
            raise RegframeInputError(f"{path}: label_channel {channel} out of range for {channels} channels")
        array = (data[channel] > 0.5).numpy()
    else:
        array = data[0].numpy()
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise RegframeInputError(f"{path}: label map contains NaN/Inf")
        if not np.allclose(array, np.round(array)):
            raise RegframeInputError(f"{path}: label map has non-integer values")
    return Volume(np.round(array).astype(np.int64), affine, path)


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
    """Read a Learn2Reg displacement file (NIfTI, channel-last ``(*shape, D)``, voxels) and return
    ``(D, *shape)`` float32."""
    path = Path(path)
    if not path.is_file():
        raise RegframeInputError(f"{path}: file not found")
    if _format(path) != "NIfTI":
        raise RegframeInputError(f"{path}: displacement files are NIfTI (.nii.gz, Learn2Reg layout)")
    try:
        array, _ = _nifti_array(path)
    except Exception as err:  # nibabel raises many types for truncated or non-NIfTI files
        raise RegframeInputError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from err
    dims = len(shape)
    if array.shape != (*shape, dims):
        raise RegframeInputError(f"{path}: displacement shape {array.shape} should be {(*shape, dims)} (channel-last, voxels)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise RegframeInputError(f"{path}: displacement contains NaN/Inf")
    return torch.from_numpy(np.moveaxis(array, -1, 0).copy())
