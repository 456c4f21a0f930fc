"""What every regframe data module shares: in-memory subjects, index pairs, dataloaders, weighted
sampling and its checkpointed state.

Subclasses fill, in ``setup``: ``train_subjects``, ``train_pairs`` (``(fixed, moving)`` indices into
``train_subjects``), ``val_subjects``/``val_pairs`` and ``test_subjects``/``test_pairs`` (same
form), and ``label_names``; in ``__init__`` they set ``preprocessing``, what the images go through
(checkpoints store it for ``regframe register``). Batches follow the regframe batch convention (``fixed``, ``moving``,
``fixed_label``, ``moving_label``, ``fixed_mask``, ``moving_mask``, ``fixed_points``,
``moving_points``, ``spacing``, ``pair_id``, ``pair_index``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import combinations, permutations
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torch.utils.data._utils.collate import default_collate

from regframe.errors import RegframeInputError
from regframe.orientation import TOLERANCE, reorient_subject, voxel_spacing
from regframe.preprocess import Preprocessing

#: Distance between the shuffle seeds of two training seeds (more epochs than any run has).
SHUFFLE_STRIDE = 1_000_003

PAIR_MODES = ("unordered", "ordered")


def require_path(path: str | Path, option: str, folder: bool = False) -> None:
    """Cheap check at construction (before any run starts): ``path`` (option ``option``) must be an
    existing file, or folder with ``folder=True``; else a one-line error naming both."""
    if not (Path(path).is_dir() if folder else Path(path).is_file()):
        raise RegframeInputError(f"{path}: {'folder' if folder else 'file'} not found ({option})")


def enumerate_pairs(count: int, mode: str) -> list[tuple[int, int]]:
    """All index pairs of ``count`` subjects: ``"unordered"`` = ``(i, j)`` with ``i < j`` (each pair
    once, fixed = lower index), ``"ordered"`` = both directions."""
    if mode == "unordered":
        return list(combinations(range(count), 2))
    if mode == "ordered":
        return list(permutations(range(count), 2))
    raise RegframeInputError(f"pair_order: unknown mode {mode!r}, expected one of {PAIR_MODES}")


def pair_item(fixed: dict, moving: dict, index: int) -> dict:
    """One batch element for the pair (fixed subject, moving subject)."""
    item = {
        "fixed": fixed["image"],
        "moving": moving["image"],
        "spacing": fixed["spacing"],
        "pair_id": f"{fixed['id']}_{moving['id']}",
        "pair_index": torch.tensor(index, dtype=torch.long),
    }
    for key, name in (("label", "label"), ("mask", "mask"), ("points", "points")):
        if fixed.get(key) is not None and moving.get(key) is not None:
            item[f"fixed_{name}"] = fixed[key]
            item[f"moving_{name}"] = moving[key]
    return item


def collate_pairs(items: list[dict]) -> dict:
    """Collate pair items; keys missing from some items are dropped, tensors of differing shapes
    (e.g. keypoint sets) are returned as lists."""
    keys = [k for k in items[0] if all(k in item for item in items)]
    batch = {}
    for key in keys:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor) and len({tuple(v.shape) for v in values}) > 1:
            batch[key] = values
        else:
            batch[key] = default_collate(values)
    return batch


class CommonOrientation:
    """The voxel-axis orientation every subject of a data module is brought to: the first
    subject's. Later subjects stored with permuted or flipped axes (e.g. LPS instead of RAS) are
    reoriented without interpolation; oblique axes, and (``check_spacing``) another voxel spacing,
    are input errors naming the file."""

    def __init__(self, check_spacing: bool = True) -> None:
        self.check_spacing = check_spacing
        self.affine: np.ndarray | None = None
        self.path: Path | None = None

    def conform(self, subject: dict, path: Path) -> dict:
        """``subject`` (raw, see :mod:`regframe.preprocess`) in the reference orientation."""
        if self.affine is None:
            self.affine, self.path = subject["affine"], path
            return subject
        subject = reorient_subject(subject, self.affine, path, self.path)
        spacing, reference = voxel_spacing(subject["affine"]), voxel_spacing(self.affine)
        if self.check_spacing and not np.allclose(spacing, reference, rtol=TOLERANCE):
            raise RegframeInputError(f"{path}: spacing {tuple(spacing.round(4).tolist())} mm differs from {self.path} "
                                     f"spacing {tuple(reference.round(4).tolist())} mm; resample to one spacing first")
        return subject


class PairDataset(Dataset):
    """Index pairs over a list of in-memory subjects."""

    def __init__(self, subjects: Sequence[dict], pairs: Sequence[tuple[int, int]]):
        self.subjects = subjects
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        fixed, moving = self.pairs[index]
        return pair_item(self.subjects[fixed], self.subjects[moving], index)


class RegistrationDataModule(pl.LightningDataModule):
    """Base class: dataloaders over subject pairs held in memory (loaded once in ``setup``)."""

    def __init__(self, batch_size: int = 1, num_workers: int = 0, val_max_pairs: int | None = None, seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_max_pairs = val_max_pairs
        self.seed = seed
        self.label_names: dict[int, str] = {}
        self.preprocessing = Preprocessing()
        self.train_subjects: list[dict] = []
        self.train_pairs: list[tuple[int, int]] = []
        self.val_subjects: list[dict] = []
        self.val_pairs: list[tuple[int, int]] = []
        self.test_subjects: list[dict] = []
        self.test_pairs: list[tuple[int, int]] = []
        self.sampler_weights: torch.Tensor | None = None
        self._loaded = False

    def setup(self, stage: str | None = None) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Fill subjects, pairs and ``label_names`` (called once)."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                          collate_fn=collate_pairs, **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Training pairs; shuffled (seeded), or drawn with replacement by ``sampler_weights``.

        The generator is seeded with ``seed + current epoch + SHUFFLE_STRIDE × training seed`` (the
        training seed is Lightning's ``seed_everything`` value, ``PL_GLOBAL_SEED``, 0 when unset): a loader
        rebuilt every epoch (``reload_dataloaders_every_n_epochs``) draws a new order each time,
        reproducibly, and runs that differ only in ``seed_everything`` see different orders while the
        split, which depends on ``seed`` alone, stays the same."""
        self.setup("fit")
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        training_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        generator = torch.Generator().manual_seed(self.seed + epoch + SHUFFLE_STRIDE * training_seed)
        dataset = PairDataset(self.train_subjects, self.train_pairs)
        if self.sampler_weights is None:
            return self._loader(dataset, self.batch_size, shuffle=True, generator=generator)
        weights = torch.as_tensor(self.sampler_weights, dtype=torch.double).flatten()
        if weights.numel() != len(self.train_pairs):
            raise RegframeInputError(
                f"sampler_weights has {weights.numel()} entries but there are {len(self.train_pairs)} training pairs")
        sampler = WeightedRandomSampler(weights, len(self.train_pairs), replacement=True, generator=generator)
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation pairs, batch size 1, fixed order (at most ``val_max_pairs``)."""
        self.setup("validate")
        pairs = self.val_pairs[: self.val_max_pairs] if self.val_max_pairs else self.val_pairs
        return self._loader(PairDataset(self.val_subjects, pairs), 1)

    def test_dataloader(self) -> DataLoader:
        """Test pairs, batch size 1, fixed order (all of them)."""
        self.setup("test")
        return self._loader(PairDataset(self.test_subjects, self.test_pairs), 1)

    def state_dict(self) -> dict:
        """Checkpointed state: the sampler weights (so a resumed run samples as before)."""
        return {"sampler_weights": self.sampler_weights}

    def load_state_dict(self, state_dict: dict) -> None:
        self.sampler_weights = state_dict.get("sampler_weights")
