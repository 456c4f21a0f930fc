"""A built-in deterministic synthetic abdomen in Learn2Reg layout, for tests, demos and CPU-scale runs.

Each subject is a CT-like volume in HU: air (-1000) outside an elliptic body, subcutaneous fat, a
muscle wall, visceral fat, a bony spine, and 13 organs with AbdomenCTCT's names and label ids, drawn
as ellipsoids at plausible relative positions. Subjects differ by a global body scaling, per-organ
shifts and scalings, and a smooth random deformation, so unregistered pairs overlap only partly and
registration has something to recover. Array axes: 0 = patient right -> left, 1 = anterior ->
posterior, 2 = inferior -> superior.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regframe.io import write_nifti

PHANTOM_VERSION = 1

# id: (name, centre, semi-axes, HU) in normalised body coordinates ([-1, 1] per axis)
ORGANS: dict[int, tuple[str, tuple[float, float, float], tuple[float, float, float], float]] = {
    6: ("liver", (-0.38, -0.02, 0.42), (0.40, 0.46, 0.34), 60.0),
    7: ("stomach", (0.30, -0.20, 0.42), (0.22, 0.20, 0.22), 15.0),
    1: ("spleen", (0.55, 0.32, 0.45), (0.16, 0.20, 0.22), 45.0),
    2: ("right kidney", (-0.40, 0.42, -0.05), (0.13, 0.15, 0.24), 150.0),
    3: ("left kidney", (0.40, 0.42, 0.00), (0.13, 0.15, 0.24), 150.0),
    11: ("pancreas", (0.10, 0.10, 0.10), (0.30, 0.08, 0.08), 35.0),
    10: ("portal and splenic vein", (0.05, 0.18, 0.22), (0.28, 0.05, 0.05), 170.0),
    4: ("gall bladder", (-0.30, -0.30, 0.08), (0.09, 0.09, 0.13), 5.0),
    9: ("inferior vena cava", (-0.12, 0.35, 0.05), (0.06, 0.06, 0.85), 120.0),
    8: ("aorta", (0.05, 0.40, 0.00), (0.06, 0.06, 0.90), 200.0),
    5: ("esophagus", (0.05, 0.25, 0.82), (0.05, 0.05, 0.20), 40.0),
    12: ("right adrenal gland", (-0.25, 0.40, 0.32), (0.06, 0.05, 0.08), 25.0),
    13: ("left adrenal gland", (0.25, 0.42, 0.32), (0.06, 0.05, 0.08), 25.0),
}
LABEL_NAMES: dict[int, str] = {k: ORGANS[k][0] for k in sorted(ORGANS)}

BODY_AXES = (0.86, 0.74)  # body ellipse semi-axes (axes 0, 1)
FAT_HU, MUSCLE_HU, VISCERAL_HU, BONE_HU, AIR_HU = -100.0, 40.0, -40.0, 400.0, -1000.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], channels: int, nodes: int,
                  amplitude: float) -> torch.Tensor:
    """Random field ``(channels, *shape)``: Gaussian values on a coarse ``nodes^3`` grid, upsampled
    (trilinear) to ``shape``."""
    coarse = torch.from_numpy(rng.normal(0.0, amplitude, (1, channels, *(nodes,) * len(shape))).astype(np.float32))
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]


def _index_box(lo: torch.Tensor, hi: torch.Tensor, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Voxel slices covering normalised coordinates ``[lo, hi]`` per axis (grid -1..1 over ``shape``)."""
    n = torch.tensor(shape, dtype=torch.float32) - 1
    start = ((lo + 1) * n / 2).floor().clamp(0, None).long()
    stop = ((hi + 1) * n / 2).ceil().long() + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def phantom_subject(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One subject: (image int16 HU, label uint8 0..13), both of ``shape`` (3-D)."""
    shape = tuple(int(s) for s in shape)
    axes = [torch.linspace(-1.0, 1.0, s) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, *S)
    body_scale = torch.tensor(rng.uniform(0.90, 1.10, 3), dtype=torch.float32)
    deformation = _smooth_field(rng, shape, 3, 4, 0.07)
    coords = (grid + deformation) / body_scale.view(3, 1, 1, 1)
    reach = deformation.abs().amax(dim=(1, 2, 3))  # bounds the grid region each organ can occupy

    radius = (coords[0] / BODY_AXES[0]) ** 2 + (coords[1] / BODY_AXES[1]) ** 2
    body = radius <= 1.0
    image = torch.full(shape, AIR_HU)
    image[body] = FAT_HU
    image[radius <= 0.80] = MUSCLE_HU
    image[radius <= 0.65] = VISCERAL_HU  # fat and bowel between the organs
    spine = (coords[0] / 0.10) ** 2 + ((coords[1] - 0.62) / 0.10) ** 2 <= 1.0
    image[spine & body] = BONE_HU
    allowed = body & ~spine

    label = torch.zeros(shape, dtype=torch.uint8)
    for organ_id, (_, centre, semi_axes, hu) in ORGANS.items():
        c = torch.tensor(centre, dtype=torch.float32) + torch.tensor(rng.normal(0.0, 0.05, 3), dtype=torch.float32)
        r = torch.tensor(semi_axes, dtype=torch.float32) * torch.tensor(rng.uniform(0.8, 1.2, 3), dtype=torch.float32)
        box = _index_box((c - r) * body_scale - reach, (c + r) * body_scale + reach, shape)
        local = coords[(slice(None), *box)]
        inside = (((local - c.view(3, 1, 1, 1)) / r.view(3, 1, 1, 1)) ** 2).sum(0) <= 1.0
        inside &= allowed[box]
        label[box][inside] = organ_id
        image[box][inside] = hu

    image += _smooth_field(rng, shape, 1, 3, 8.0)[0]  # smooth bias, HU
    image += torch.from_numpy(rng.normal(0.0, 10.0, shape).astype(np.float32))
    image[~body] = AIR_HU
    return image.round().numpy().astype(np.int16), label.numpy()


def _phantom_params(subjects: int, shape: Sequence[int], spacing: Sequence[float], seed: int,
                    val_subjects: int) -> dict:
    return {"version": PHANTOM_VERSION, "subjects": subjects, "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing], "seed": seed, "val_subjects": val_subjects}


def _spacing3(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    values = [float(spacing)] * 3 if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"spacing must be a positive number or three of them, got {spacing!r}")
    return tuple(values)


def write_phantom_dataset(
    out_dir: str | Path,
    subjects: int = 8,
    shape: Sequence[int] = (64, 56, 80),
    spacing: float | Sequence[float] = 6.0,
    seed: int = 0,
    val_subjects: int = 3,
) -> Path:
    """Write ``subjects`` phantom subjects in Learn2Reg layout under ``out_dir``
    (``Phantom_dataset.json``, ``imagesTr/Phantom_0001_0000.nii.gz``, ``labelsTr/...``) and return
    the json path. ``registration_val`` = all pairs among the last ``val_subjects`` subjects.
    Deterministic in ``seed``; spacing in mm (default 6 mm: AbdomenCTCT's field of view at a third
    of its resolution)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}")
    if subjects < 2 or not 2 <= val_subjects <= subjects:
        raise ValueError(f"need subjects >= 2 and 2 <= val_subjects <= subjects, got {subjects}, {val_subjects}")
    spacing = _spacing3(spacing)
    out_dir = Path(out_dir)
    affine = np.diag([*spacing, 1.0])
    training = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small element-wise work: extra threads only contend (much slower on a busy CPU)
    try:
        volumes = [phantom_subject(shape, np.random.default_rng([seed, index])) for index in range(subjects)]
    finally:
        torch.set_num_threads(threads)
    for index, (image, label) in enumerate(volumes):
        name = f"Phantom_{index + 1:04d}_0000.nii.gz"
        write_nifti(out_dir / "imagesTr" / name, image, affine)
        write_nifti(out_dir / "labelsTr" / name, label, affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    val_images = [t["image"] for t in training[subjects - val_subjects:]]
    registration_val = [{"fixed": f, "moving": m} for i, f in enumerate(val_images) for m in val_images[i + 1:]]
    dataset = {
        "name": "Phantom",
        "description": "regframe synthetic abdomen phantom (13 organs, CT-like HU)",
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(shape)},
        "modality": {"0": "CT"},
        "labels": {"0": {str(k): v for k, v in LABEL_NAMES.items()}},
        "pairings": "unpaired",
        "registration_direction": {"fixed": 0, "moving": 0},
        "numTraining": subjects,
        "training": training,
        "numRegistration_val": len(registration_val),
        "registration_val": registration_val,
        "regframe_phantom": _phantom_params(subjects, shape, spacing, seed, val_subjects),
    }
    json_path = out_dir / "Phantom_dataset.json"
    tmp = json_path.with_name(f".{json_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dataset, indent=1))
    tmp.replace(json_path)
    return json_path


def ensure_phantom_dataset(
    root: str | Path | None = None,
    subjects: int = 8,
    shape: Sequence[int] = (64, 56, 80),
    spacing: float | Sequence[float] = 6.0,
    seed: int = 0,
    val_subjects: int = 3,
) -> Path:
    """The phantom's json under ``root`` (default: a per-parameter folder under ``$REGFRAME_CACHE``
    or the system temp dir), written only if absent or made with other parameters."""
    spacing = _spacing3(spacing)
    params = _phantom_params(subjects, shape, spacing, seed, val_subjects)
    if root is None:
        key = "_".join(f"{k}{'x'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items())
        root = Path(os.environ.get("REGFRAME_CACHE", tempfile.gettempdir())) / "regframe_phantom" / key
    json_path = Path(root) / "Phantom_dataset.json"
    if json_path.is_file():
        try:
            if json.loads(json_path.read_text()).get("regframe_phantom") == params:
                return json_path
        except json.JSONDecodeError:
            pass
    return write_phantom_dataset(root, subjects, shape, spacing, seed, val_subjects)
