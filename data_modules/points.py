"""Keypoint clouds of Learn2Reg lung CT pairs, leave one pair out (reader and sampling in
:mod:`regframe.point_clouds`).

A batch (``B`` items; ``(B, ...)`` tensors, lists where shapes differ between items):

- ``fixed_points (B, N_f, 3)``, ``moving_points (B, N_m, 3)``: mm (``voxel x spacing``, origin at
  voxel 0), random subsets of the pair's keypoints drawn independently (``disjoint``: no shared
  row), rows shuffled: the keypoint correspondence is not given.
- ``fixed_point_index (B, N_f)``: row of each fixed point in the pair's fixed keypoint file
  (to keep per-point pseudo labels across epochs; it says nothing about the moving cloud).
- ``fixed_landmarks``, ``moving_landmarks (B, L, 3)`` mm, row ``i`` corresponding (evaluation only).
- ``fixed_affine``, ``moving_affine (B, 4, 4)``: the augmentation, original mm -> served mm
  (identity without augmentation); points and landmarks of a side went through its affine.
- ``spacing (B, 3)`` mm, ``grid_shape (B, 3)`` voxels of the fixed grid, ``pair_id``, ``pair_index``.
- Validation/test only: ``fixed_points_in_moving (B, N_f, 3)`` mm, the true moving position of
  each fixed point (TRE at keypoints), and ``fixed_mask (B, 1, *grid_shape)`` bool.
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from data_modules.base import collate_pairs, require_path
from regframe.errors import RegframeInputError
from regframe.learn2reg import _id_key
from regframe.point_clouds import (CloudSampling, EpochSeededSampler, PointPair, PointPairDataset, cloud_sizes,
                                   find_point_pairs, load_point_pair)


class PointCloudDataModule(pl.LightningDataModule):
    """Leave-one-pair-out keypoint clouds: ``test_pair`` (an id such as ``"0003"``, ``3`` or
    ``"0003_0003"``) is held out for validation and test, the other pairs train.

    Every training epoch serves each training pair ``samples_per_pair`` times with fresh subsets
    and, with ``augment``, fresh random affines (``sigma_fixed``, ``sigma_moving_extra``: see
    :class:`regframe.augment.PairAffineAugmentation`). The held-out pair is served without
    augmentation and with the same subsets every time. Cloud sizes are ``fixed_count`` and
    ``moving_count`` (the paper: about 1k and 2k), scaled down together to fit the pair with the
    fewest keypoints (``disjoint``: fixed + moving rows; else each), so batches stack; the sizes
    served are recorded as ``served_fixed_count`` / ``served_moving_count`` in the hyperparameters (and
    so in checkpoints, for ``regframe register``).

    Independent subsets (the default) stand for keypoints detected separately on each scan, as the
    paper's Förstner keypoints are: a repeatable detector fires on the same structure in both, so
    most fixed points have a counterpart in the moving cloud (here an exact one, without the
    detector's localisation noise). ``moving_jitter_mm`` adds that noise: Gaussian, per axis, to the
    moving cloud (fresh in every training draw, fixed for the held-out pair). Without it a matcher
    with random features already brings pair 0001 from 20 mm to about 1 mm at the keypoints: the
    exact counterparts make the problem trivial. ``disjoint`` removes every counterpart instead: the
    nearest moving point to a fixed point's target is then about 13 mm away on these pairs, and
    random-feature pseudo labels are worse than no registration (``benchmarks/cst_points_results.md``).
    """

    def __init__(
        self,
        root: str,
        test_pair: str | int,
        config: str | None = None,
        fixed_count: int = 1000,
        moving_count: int = 2000,
        disjoint: bool = False,
        moving_jitter_mm: float = 0.0,
        augment: bool = True,
        sigma_fixed: float = 0.075,
        sigma_moving_extra: float = 0.05,
        samples_per_pair: int = 1,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        require_path(root, "root", folder=True)
        if samples_per_pair < 1:
            raise RegframeInputError(f"samples_per_pair must be >= 1, got {samples_per_pair}")
        cloud_sizes(1 << 30, fixed_count, moving_count, disjoint)  # validates the counts early
        self.files = find_point_pairs(root, config)
        wanted = _id_key(test_pair)
        held_out = [f for f in self.files if wanted in (_id_key(f.pair_id.split("_")[0]), f.pair_id)]
        if len(held_out) != 1:
            raise RegframeInputError(f"test_pair: {test_pair!r} is not one of the pairs "
                                     f"{[f.pair_id for f in self.files]} of {root}")
        if len(self.files) < 2:
            raise RegframeInputError(f"test_pair: {root} lists one pair only; leave-one-pair-out needs two or more")
        self.test_pair_id = held_out[0].pair_id
        if moving_jitter_mm < 0:
            raise RegframeInputError(f"moving_jitter_mm must be >= 0, got {moving_jitter_mm}")
        self.fixed_count, self.moving_count, self.disjoint = fixed_count, moving_count, disjoint
        self.moving_jitter_mm = moving_jitter_mm
        self.augmentation = (sigma_fixed, sigma_moving_extra) if augment else None
        self.samples_per_pair = samples_per_pair
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_pairs: list[PointPair] = []
        self.test_pairs: list[PointPair] = []
        self.train_sampling: CloudSampling | None = None
        self.test_sampling: CloudSampling | None = None
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs:
            return
        pairs = [load_point_pair(files) for files in self.files]
        self.train_pairs = [p for p in pairs if p.pair_id != self.test_pair_id]
        self.test_pairs = [p for p in pairs if p.pair_id == self.test_pair_id]
        fewest = min(len(p.fixed_keypoints) for p in pairs)
        fixed, moving = cloud_sizes(fewest, self.fixed_count, self.moving_count, self.disjoint)
        self.hparams.update(served_fixed_count=fixed, served_moving_count=moving)  # saved in checkpoints
        self.train_sampling = CloudSampling(fixed, moving, self.disjoint, self.augmentation, self.moving_jitter_mm)
        self.test_sampling = CloudSampling(fixed, moving, self.disjoint, None, self.moving_jitter_mm)

    @property
    def val_pairs(self) -> list[PointPair]:
        """Validation serves the held-out pair (there is no separate validation pair)."""
        return self.test_pairs

    def _loader(self, pairs: list[PointPair], sampling: CloudSampling, evaluation: bool, batch_size: int,
                sampler: EpochSeededSampler) -> DataLoader:
        return DataLoader(PointPairDataset(pairs, sampling, evaluation), batch_size=batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate_pairs)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        sampler = EpochSeededSampler(len(self.train_pairs), self.seed, self.samples_per_pair, shuffle=True)
        return self._loader(self.train_pairs, self.train_sampling, False, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        sampler = EpochSeededSampler(len(self.test_pairs), self.seed, shuffle=False)
        return self._loader(self.test_pairs, self.test_sampling, True, 1, sampler)
