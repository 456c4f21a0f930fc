"""Learn2Reg data-set description: parse any ``{Task}_dataset.json`` (training subjects,
``registration_val`` / ``registration_test`` pairs, label names) and read one subject's files
(image, label, mask ``masksTr/``, keypoints ``keypointsTr/*.csv`` and landmarks ``landmarksTr/*.csv`` in voxel
coordinates).

``load_dataset_json`` reads the json alone (no image is read); ``load_subject`` reads the files of
one subject into a subject dict (see :mod:`regframe.preprocess`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regframe.errors import RegframeInputError
from regframe.io import check_same_grid, read_image, read_label

_SUBJECT_ID = re.compile(r"_(\d+)_\d{4}$")


def subject_id(path: str | Path) -> str:
    """Subject id from a Learn2Reg file name: ``AbdomenCTCT_0021_0000.nii.gz`` -> ``"0021"``
    (falls back to the name without extension)."""
    stem = Path(path).name.split(".nii")[0]
    match = _SUBJECT_ID.search(stem)
    return match.group(1) if match else stem


def _id_key(value: str | int) -> str:
    """Comparable subject id: numeric ids match regardless of zero padding (YAML reads 0001 as 1)."""
    text = str(value)
    return str(int(text)) if text.isdigit() else text


@dataclass(frozen=True)
class SubjectEntry:
    """Files of one subject (absolute paths; ``None`` where absent)."""

    id: str
    image: Path
    label: Path | None = None
    mask: Path | None = None
    keypoints: Path | None = None
    landmarks: Path | None = None


@dataclass(frozen=True)
class PairEntry:
    """One registration pair; ``pair_id`` is ``"{fixed.id}_{moving.id}"``."""

    fixed: SubjectEntry
    moving: SubjectEntry

    @property
    def pair_id(self) -> str:
        return f"{self.fixed.id}_{self.moving.id}"


@dataclass
class Learn2RegSpec:
    """A parsed Learn2Reg dataset json."""

    json_path: Path
    name: str
    training: list[SubjectEntry]
    registration_val: list[PairEntry]
    registration_test: list[PairEntry]
    label_names: dict[int, str]
    image_shape: tuple[int, ...] | None = None
    by_image: dict[Path, SubjectEntry] = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        """Folder the json's relative paths are resolved against."""
        return self.json_path.parent

    @staticmethod
    def subject_id(path: str | Path) -> str:
        return subject_id(path)

    @property
    def val_subject_ids(self) -> set[str]:
        return {s.id for p in self.registration_val for s in (p.fixed, p.moving)}


def _sibling(image: Path, folder: str, suffix: str | None = None) -> Path | None:
    """``root/imagesTr/X.nii.gz`` -> ``root/{folder}/X{suffix}`` if that file exists."""
    name = image.name if suffix is None else image.name.split(".nii")[0] + suffix
    candidate = image.parent.parent / folder / name
    return candidate if candidate.is_file() else None


def _entry(image: Path, label: Path | None) -> SubjectEntry:
    tag = "Tr" if image.parent.name.endswith("Tr") else "Ts"
    if label is None:
        label = _sibling(image, f"labels{tag}")
    return SubjectEntry(
        id=subject_id(image), image=image, label=label,
        mask=_sibling(image, f"masks{tag}"), keypoints=_sibling(image, f"keypoints{tag}", ".csv"),
        landmarks=_sibling(image, f"landmarks{tag}", ".csv"))


def load_dataset_json(path: str | Path) -> Learn2RegSpec:
    """Parse a Learn2Reg ``{Task}_dataset.json``; paths are resolved relative to the json.
    Raises ``RegframeInputError`` naming the json and key for a missing file or malformed content
    (image files themselves are only checked for existence when read)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise RegframeInputError(f"{path}: dataset json not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegframeInputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise RegframeInputError(f"{path}: expected a JSON object at top level")
    root = path.parent

    def resolve(value: object, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise RegframeInputError(f"{path}: {where} should be a relative file path, got {value!r}")
        return (root / value).resolve()

    def get(obj: dict, key: str, where: str) -> object:
        if not isinstance(obj, dict) or key not in obj:
            raise RegframeInputError(f"{path}: missing key {where}{key!r}")
        return obj[key]

    training_raw = get(data, "training", "")
    if not isinstance(training_raw, list) or not training_raw:
        raise RegframeInputError(f"{path}: 'training' should be a non-empty list")
    training = []
    for i, item in enumerate(training_raw):
        image = resolve(get(item, "image", f"training[{i}]."), f"training[{i}].image")
        label = resolve(item["label"], f"training[{i}].label") if item.get("label") else None
        training.append(_entry(image, label))
    by_image = {entry.image: entry for entry in training}

    def pairs(key: str) -> list[PairEntry]:
        raw = data.get(key, [])
        if not isinstance(raw, list):
            raise RegframeInputError(f"{path}: {key!r} should be a list of {{fixed, moving}}")
        out = []
        for i, item in enumerate(raw):
            fixed, moving = (resolve(get(item, k, f"{key}[{i}]."), f"{key}[{i}].{k}") for k in ("fixed", "moving"))
            out.append(PairEntry(by_image.get(fixed) or _entry(fixed, None),
                                 by_image.get(moving) or _entry(moving, None)))
        return out

    labels = data.get("labels", {})
    label_names: dict[int, str] = {}
    if labels:
        names = labels.get("0", labels) if isinstance(labels, dict) else None
        if not isinstance(names, dict):
            raise RegframeInputError(
                f"{path}: 'labels' should map label ids to names, e.g. {{\"0\": {{\"1\": \"spleen\"}}}}")
        try:
            label_names = {int(k): str(v) for k, v in names.items() if int(k) != 0}
        except ValueError as err:
            raise RegframeInputError(f"{path}: 'labels' keys must be integers ({err})") from err
    shape = data.get("tensorImageShape", {}).get("0") if isinstance(data.get("tensorImageShape"), dict) else None
    return Learn2RegSpec(
        json_path=path, name=str(data.get("name", path.stem.removesuffix("_dataset"))), training=training,
        registration_val=pairs("registration_val"), registration_test=pairs("registration_test"),
        label_names=label_names, image_shape=tuple(int(s) for s in shape) if shape else None, by_image=by_image)


def read_keypoints(path: Path) -> torch.Tensor:
    """Learn2Reg keypoints csv (one ``x,y,z`` row per point, voxel coordinates) -> ``(N, 3)`` float32;
    a one-line error naming the file for an unreadable, empty, non-finite or wrongly shaped table."""
    try:
        points = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as err:
        raise RegframeInputError(f"{path}: cannot read keypoints as comma-separated numbers ({err})") from err
    if points.shape[0] == 0 or points.shape[1] != 3:
        raise RegframeInputError(f"{path}: expected rows of 3 coordinates (x,y,z), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise RegframeInputError(f"{path}: keypoints contain NaN/Inf")
    return torch.from_numpy(points.astype(np.float32))


def label_ids(label: np.ndarray) -> list[int]:
    """Distinct values of an integer label map (bincount: much faster than ``np.unique`` on volumes)."""
    flat = label.ravel(order="K")
    if flat.size and flat.min() >= 0:
        return np.flatnonzero(np.bincount(flat)).tolist()
    return np.unique(flat).tolist()


def load_subject(entry: SubjectEntry, label_names: dict[int, str], label_channel: int | None = None) -> dict:
    """Read one subject's files into a subject dict (see :mod:`regframe.preprocess`), checking that
    label and mask share the image grid and that label ids are known."""
    image = read_image(entry.image)
    subject = {
        "id": entry.id,
        "image": torch.from_numpy(image.array.copy())[None],
        "label": None,
        "spacing": torch.tensor(image.spacing, dtype=torch.float32),
        "affine": image.affine,
    }
    if entry.label is not None:
        label = read_label(entry.label, channel=label_channel)
        check_same_grid(image, label)
        if label_names:
            unknown = sorted(set(label_ids(label.array)) - {0, *label_names})
            if unknown:
                raise RegframeInputError(
                    f"{entry.label}: label ids {unknown} are not listed in the dataset json "
                    f"'labels' {sorted(label_names)}")
        subject["label"] = torch.from_numpy(np.ascontiguousarray(label.array))[None]
    if entry.mask is not None:
        mask = read_label(entry.mask)
        check_same_grid(image, mask)
        subject["mask"] = torch.from_numpy(np.ascontiguousarray(mask.array))[None]
    if entry.keypoints is not None:
        subject["points"] = read_keypoints(entry.keypoints)
    return subject
