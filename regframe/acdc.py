"""The ACDC cardiac cine-MRI data set in its original layout (Bernard et al., IEEE TMI 37(11) 2018):

    root/training/patientNNN/Info.cfg                      (``ED: 1``, ``ES: 12``, ...)
    root/training/patientNNN/patientNNN_frameXX.nii.gz     (short-axis stack, X x Y x Z)
    root/training/patientNNN/patientNNN_frameXX_gt.nii.gz  (0 background, 1 RV cavity, 2 myocardium, 3 LV cavity)
    root/testing/patientNNN/...                            (the same, patients 101-150)

One *patient* gives the ED (end-diastole) and ES (end-systole) frames and their labels. The AdaCS
protocol registers ED (moving) to ES (fixed) of the same patient, slice by slice, each slice pair
cropped to ``size x size`` around the centroid of the ED myocardium (:func:`slice_pairs`);
:func:`volume_pair` keeps the whole stack (in-plane crop, centred pad/crop along the slice axis).

Intensities are normalised per image (per frame volume): ``x -> clip((x - min) / (p99.5 - min), 0, 1)``,
so ED and ES slices of one patient share one scale and a few bright voxels do not compress the rest.
The voxel size is the NIfTI header's ``pixdim``: the sform of the distributed files is a unit-scaled
orientation matrix (1 mm), while ``pixdim`` holds the acquisition's 0.7-1.9 mm in-plane, 5-10 mm slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regframe.errors import RegframeInputError
from regframe.io import Volume, check_same_grid, read_image, read_label

MYOCARDIUM = 2
LABEL_NAMES = {1: "rv_cavity", 2: "myocardium", 3: "lv_cavity"}
NORMALISATION_PERCENTILE = 99.5


@dataclass
class Patient:
    """ED and ES frames of one patient: ``*_image`` float32 ``(X, Y, Z)`` in [0, 1], ``*_label``
    int64 ``(X, Y, Z)``, ``spacing`` (3,) mm."""

    id: str
    ed_image: np.ndarray
    ed_label: np.ndarray
    es_image: np.ndarray
    es_label: np.ndarray
    spacing: tuple[float, float, float]


def patient_folders(split_folder: Path) -> list[Path]:
    """The ``patientNNN`` folders of ``training/`` or ``testing/``, sorted; an error when there are none."""
    if not split_folder.is_dir():
        raise RegframeInputError(f"{split_folder}: folder not found (ACDC layout: root/training, root/testing)")
    folders = sorted(p for p in split_folder.iterdir() if p.is_dir() and p.name.startswith("patient"))
    if not folders:
        raise RegframeInputError(f"{split_folder}: no patientNNN folders")
    return folders


def read_info(path: Path) -> tuple[int, int]:
    """ED and ES frame numbers from an ``Info.cfg`` (``key: value`` lines)."""
    if not path.is_file():
        raise RegframeInputError(f"{path}: file not found (ACDC Info.cfg with ED/ES frame numbers)")
    values = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    try:
        return int(values["ED"].strip()), int(values["ES"].strip())
    except (KeyError, ValueError) as err:
        raise RegframeInputError(f"{path}: expected integer 'ED:' and 'ES:' lines ({type(err).__name__}: {err})"
                                 ) from err


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """``clip((x - min) / (p99.5 - min), 0, 1)`` as float32 (a constant image becomes 0)."""
    low, high = float(image.min()), float(np.percentile(image, NORMALISATION_PERCENTILE))
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)


def read_patient(folder: Path) -> Patient:
    """Read the ED and ES frames (image and label) of ``folder``; all four must share one grid."""
    ed, es = read_info(folder / "Info.cfg")
    volumes: dict[str, tuple[Volume, Volume]] = {}
    for name, frame in (("ed", ed), ("es", es)):
        image = read_image(folder / f"{folder.name}_frame{frame:02d}.nii.gz")
        label = read_label(folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz")
        check_same_grid(image, label)
        volumes[name] = (image, label)
    check_same_grid(volumes["es"][0], volumes["ed"][0])
    (ed_image, ed_label), (es_image, es_label) = volumes["ed"], volumes["es"]
    spacing = tuple(float(s) for s in nib.load(str(ed_image.path)).header.get_zooms()[:3])
    if len(spacing) != 3 or min(spacing) <= 0:
        raise RegframeInputError(f"{ed_image.path}: header voxel size {spacing} is not three positive numbers")
    return Patient(folder.name, normalise_intensity(ed_image.array), ed_label.array,
                   normalise_intensity(es_image.array), es_label.array, spacing)


def myocardium_centre(label: np.ndarray) -> np.ndarray | None:
    """Centroid (voxels, in-plane ``(x, y)``) of the myocardium in a 2D or 3D label map, None if absent."""
    points = np.argwhere(label == MYOCARDIUM)
    return points[:, :2].mean(0) if len(points) else None


def crop_around(array: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """In-plane window ``size x size`` of ``array`` ``(X, Y, ...)`` centred on ``centre`` (voxels),
    moved inside the image where it would cross a border; an image smaller than ``size`` is
    zero-padded (background, intensity 0) to ``size`` first, centred."""
    pads = [((size - n) // 2, size - n - (size - n) // 2) if n < size else (0, 0) for n in array.shape[:2]]
    array = np.pad(array, pads + [(0, 0)] * (array.ndim - 2))
    window = []
    for axis in range(2):
        start = int(round(centre[axis] + pads[axis][0] - size / 2))
        start = min(max(start, 0), array.shape[axis] - size)
        window.append(slice(start, start + size))
    return array[tuple(window)]


def slice_pairs(patient: Patient, size: int) -> list[dict]:
    """Every short-axis slice pair of ``patient`` as ``{"index", "ed_image", "ed_label", "es_image",
    "es_label"}`` (``(size, size)`` arrays), cropped around the centroid of the ED slice's myocardium.
    A slice whose ED label has no myocardium (apex, base) is kept and cropped around the centroid of
    the whole ED stack's myocardium (the stack must have some)."""
    stack_centre = myocardium_centre(patient.ed_label)
    if stack_centre is None:
        raise RegframeInputError(f"{patient.id}: the ED label has no myocardium (label {MYOCARDIUM}) to crop around")
    pairs = []
    for z in range(patient.ed_label.shape[2]):
        centre = myocardium_centre(patient.ed_label[..., z])
        centre = stack_centre if centre is None else centre
        pairs.append({"index": z, **{key: crop_around(getattr(patient, key)[..., z], centre, size)
                                     for key in ("ed_image", "ed_label", "es_image", "es_label")}})
    return pairs


def volume_pair(patient: Patient, size: int, depth: int) -> dict:
    """The ED and ES stacks ``(size, size, depth)``: cropped in-plane around the ED stack's myocardium
    centroid, centred zero pad/crop along the slice axis (label 0 where padded)."""
    centre = myocardium_centre(patient.ed_label)
    if centre is None:
        raise RegframeInputError(f"{patient.id}: the ED label has no myocardium (label {MYOCARDIUM}) to crop around")
    out = {}
    for key in ("ed_image", "ed_label", "es_image", "es_label"):
        array = crop_around(getattr(patient, key), centre, size)
        n = array.shape[2]
        if n < depth:
            array = np.pad(array, [(0, 0), (0, 0), ((depth - n) // 2, depth - n - (depth - n) // 2)])
        else:
            array = array[..., (n - depth) // 2:(n - depth) // 2 + depth]
        out[key] = array
    return out


def as_subject(identifier: str, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """A regframe subject dict: ``image`` (1, *S) float32, ``label`` (1, *S) long, ``spacing`` (D,) mm."""
    return {"id": identifier, "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None],
            "spacing": torch.tensor(spacing, dtype=torch.float32)}
