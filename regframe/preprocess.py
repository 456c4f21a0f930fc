"""Per-subject preprocessing shared by the data modules: intensity mapping, resampling by a factor
(torch ``interpolate``, as ``regframe register`` resamples), centred pad/crop to a target shape
(torchio).

A *subject* is a dict ``{"id": str, "image": (1,*S) float, "label": (1,*S) long | None,
"spacing": (D,) float mm, "affine": (4, 4) float64 numpy}`` with optional ``"mask"`` ((1,*S) long)
and ``"points"`` ((N, D) float, voxel coordinates). Arrays keep the on-disk axis order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio

from regframe.spatial import resize_image


@dataclass(frozen=True)
class Preprocessing:
    """What a method's inputs went through, stored in checkpoints and reused at inference.

    Intensities: ``x -> (clip(x, *clamp) + shift) * scale`` (``clamp=None`` skips clipping).
    Resolution: resampled by ``resample_factor`` per axis (0.5 = half resolution, spacing doubles).
    """

    clamp: tuple[float, float] | None = None
    shift: float = 0.0
    scale: float = 1.0
    resample_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.clamp is not None:
            object.__setattr__(self, "clamp", (float(self.clamp[0]), float(self.clamp[1])))

    def intensity(self, image: torch.Tensor) -> torch.Tensor:
        """The intensity map alone, on any tensor."""
        if self.clamp is not None:
            image = image.clamp(self.clamp[0], self.clamp[1])
        return (image + self.shift) * self.scale

    def subject(self, subject: dict) -> dict:
        """Resample a subject dict by ``resample_factor``, then map its image's intensities."""
        out = dict(resample_by_factor(subject, self.resample_factor))
        out["image"] = self.intensity(out["image"])
        return out

    def image(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An array ``(*S)`` as stored on disk -> the network input ``(1, 1, *S')``."""
        x = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
        x = self.intensity(x)[None, None]
        if self.resample_factor != 1.0:
            x = resize_image(x, [max(1, math.floor(s * self.resample_factor)) for s in x.shape[2:]])
        return x

    def to_dict(self) -> dict:
        return {"clamp": list(self.clamp) if self.clamp is not None else None, "shift": self.shift,
                "scale": self.scale, "resample_factor": self.resample_factor}

    @classmethod
    def from_dict(cls, values: dict | None) -> "Preprocessing":
        values = dict(values or {})
        clamp = values.get("clamp")
        return cls(tuple(clamp) if clamp else None, float(values.get("shift", 0.0)), float(values.get("scale", 1.0)),
                   float(values.get("resample_factor", 1.0)))


def _rescale_affine(affine: np.ndarray, old: Sequence[int], new: Sequence[int]) -> np.ndarray:
    """Affine of a grid of ``new`` voxels covering the same field of view as ``old`` voxels
    (voxel centres at ``(i + 0.5) * old / new - 0.5`` in old voxel units)."""
    ratio = np.ones(3)
    ratio[: len(old)] = [o / n for o, n in zip(old, new)]
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(ratio)
    voxel_map[:3, 3] = (ratio - 1.0) / 2.0
    return affine @ voxel_map


def resize_subject(subject: dict, shape: Sequence[int]) -> dict:
    """Resample a subject to ``shape`` over the same field of view: image (bi/tri)linear, label and
    mask nearest, spacing/affine/points updated (interpolation with ``align_corners=False``)."""
    old = tuple(subject["image"].shape[1:])
    shape = tuple(int(s) for s in shape)
    if shape == old:
        return subject
    out = dict(subject)
    out["image"] = resize_image(subject["image"][None], shape)[0]
    for key in ("label", "mask"):
        if subject.get(key) is not None:
            out[key] = F.interpolate(subject[key][None].float(), size=shape, mode="nearest-exact")[0].long()
    ratio = torch.tensor([n / o for n, o in zip(shape, old)], dtype=torch.float32)
    out["spacing"] = subject["spacing"] / ratio
    out["affine"] = _rescale_affine(subject["affine"], old, shape)
    if subject.get("points") is not None:
        out["points"] = (subject["points"] + 0.5) * ratio - 0.5
    return out


def resample_by_factor(subject: dict, factor: float) -> dict:
    """Resample by ``factor`` per axis (0.5 = half resolution, spacing doubles); the new size is
    ``floor(size * factor)`` as in ``torch.nn.functional.interpolate(scale_factor=...)``."""
    if factor == 1.0:
        return subject
    shape = [max(1, math.floor(s * factor)) for s in subject["image"].shape[1:]]
    return resize_subject(subject, shape)


def _centred_margins(old: int, new: int) -> tuple[int, int]:
    """Voxels to remove (or add) at the start and the end of one axis to centre ``new`` in ``old``
    (or ``old`` in ``new``); an odd difference leaves the extra voxel at the end."""
    difference = abs(old - new)
    return difference // 2, difference - difference // 2


def pad_crop_subject(subject: dict, shape: Sequence[int]) -> dict:
    """Centred zero pad or crop of a 3-D subject to ``shape`` through torchio's ``Pad`` and ``Crop``,
    which move the affine origin; spacing unchanged, points shifted so world coordinates are kept."""
    old = tuple(subject["image"].shape[1:])
    shape = tuple(int(s) for s in shape)
    if shape == old:
        return subject
    pad = [_centred_margins(o, n) if n > o else (0, 0) for o, n in zip(old, shape)]
    crop = [_centred_margins(o, n) if o > n else (0, 0) for o, n in zip(old, shape)]
    keys = [key for key in ("image", "label", "mask") if subject.get(key) is not None]
    images = tio.Subject({key: (tio.ScalarImage if key == "image" else tio.LabelMap)(
        tensor=subject[key], affine=subject["affine"]) for key in keys})
    images = tio.Crop(tuple(m for axis in crop for m in axis))(tio.Pad(tuple(m for axis in pad for m in axis))(images))
    out = dict(subject)
    for key in keys:
        out[key] = images[key].data
    out["affine"] = np.asarray(images["image"].affine, dtype=np.float64)
    if subject.get("points") is not None:  # new voxel i sits at old voxel i + start of crop - start of pad
        offset = torch.tensor([c[0] - p[0] for c, p in zip(crop, pad)], dtype=subject["points"].dtype)
        out["points"] = subject["points"] - offset
    return out
