"""2D registration pairs cut from any 3D data module (e.g. axial slices of the prostate volumes).

Every subject of the wrapped module yields one 2D subject per relative slice position along
``axis``; a 3D pair ``(fixed, moving)`` becomes one 2D pair per position (the same relative
position in both images, which share a grid). Splits, label names and batch keys carry over.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_modules.base import RegistrationDataModule
from regframe.errors import RegframeInputError


def slice_subject(subject: dict, axis: int, index: int) -> dict:
    """The 2D subject at ``index`` along spatial ``axis`` (0..2) of a 3D subject dict."""
    out = {"id": f"{subject['id']}_s{index}", "spacing": _drop(subject["spacing"], axis)}
    for key in ("image", "label", "mask"):
        if subject.get(key) is not None:
            out[key] = subject[key].select(1 + axis, index)
    return out


def _drop(spacing, axis: int):
    keep = [a for a in range(len(spacing)) if a != axis]
    return spacing[keep]


class SliceDataModule(RegistrationDataModule):
    """2D pairs from the 3D data module ``volumes``.

    Args:
        volumes: a 3D :class:`RegistrationDataModule` (its ``setup`` is called here).
        axis: spatial axis the slices are orthogonal to (2 = axial for RAS-stored volumes).
        positions: relative slice positions in [0, 1] (0.5 = the middle slice).
        batch_size, num_workers, val_max_pairs, seed: as in :class:`RegistrationDataModule`.
    """

    def __init__(self, volumes: RegistrationDataModule, axis: int = 2, positions: Sequence[float] = (0.5,),
                 batch_size: int = 1, num_workers: int = 0, val_max_pairs: int | None = None, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_max_pairs=val_max_pairs, seed=seed)
        if axis not in (0, 1, 2):
            raise RegframeInputError(f"axis must be 0, 1 or 2, got {axis}")
        if not positions or any(not 0.0 <= p <= 1.0 for p in positions):
            raise RegframeInputError(f"positions must be a non-empty list of numbers in [0, 1], got {positions!r}")
        self.volumes = volumes
        self.preprocessing = volumes.preprocessing
        self.axis = axis
        self.positions = tuple(float(p) for p in positions)

    def load(self) -> None:
        self.volumes.setup("fit")
        self.label_names = dict(self.volumes.label_names)
        for split in ("train", "val", "test"):
            subjects, pairs = self._slice(getattr(self.volumes, f"{split}_subjects"),
                                          getattr(self.volumes, f"{split}_pairs"), split)
            setattr(self, f"{split}_subjects", subjects)
            setattr(self, f"{split}_pairs", pairs)

    def _slice(self, subjects: list[dict], pairs: list[tuple[int, int]], split: str
               ) -> tuple[list[dict], list[tuple[int, int]]]:
        count = len(self.positions)
        sliced = []
        for subject in subjects:
            if subject["image"].dim() != 4:
                raise RegframeInputError(f"{split} subject {subject['id']}: expected a 3D image (1, X, Y, Z), "
                                         f"got shape {tuple(subject['image'].shape)}")
            size = subject["image"].shape[1 + self.axis]
            sliced += [slice_subject(subject, self.axis, round(p * (size - 1))) for p in self.positions]
        return sliced, [(f * count + k, m * count + k) for f, m in pairs for k in range(count)]
