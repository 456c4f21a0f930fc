"""Keypoint clouds of Learn2Reg lung CT pairs (``LungCT`` layout) for keypoint-based registration.

Layout read (``root``): ``{Task}_VAL_evaluation_config.json`` (``eval_pairs``: fixed/moving image
paths, which name the files below), ``keypointsTr/{scan}.csv`` and ``landmarksTr/{scan}.csv`` (one
``x,y,z`` row of voxel coordinates per point; row ``i`` of the fixed file corresponds to row ``i``
of the moving file), ``masksTr/{fixed scan}.nii.gz`` (fixed lung mask; its header gives the grid
shape and spacing, which the moving scan shares in Learn2Reg LungCT).

Units: clouds are in mm, ``mm = voxel index x spacing`` per axis, origin at voxel 0 (the image
affine's origin and direction are ignored; in LungCT they are zero and the identity).

A registration method must not see the keypoint correspondence: :func:`draw_clouds` takes the
fixed and the moving cloud from different random subsets of the rows (independent or disjoint)
and shuffles both. Landmarks, and the true moving position of each fixed point, are for evaluation.
Random affine augmentation (:func:`random_point_affines`) maps the fixed cloud and fixed landmarks
with one affine, the moving cloud and moving landmarks with another (CST's asymmetric
augmentation; ``sigma_moving_extra=0`` makes them equal); both affines travel with the item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from regframe.augment import PairAffineAugmentation
from regframe.errors import RegframeInputError
from regframe.io import read_label
from regframe.learn2reg import read_keypoints, subject_id
from regframe.orientation import voxel_spacing
from regframe.points import apply_affine, jittered


@dataclass(frozen=True)
class PointPairFiles:
    """Files of one pair (absolute paths); ``pair_id`` is ``"{fixed id}_{moving id}"``, e.g. ``"0001_0001"``."""

    pair_id: str
    fixed_keypoints: Path
    moving_keypoints: Path
    fixed_landmarks: Path
    moving_landmarks: Path
    fixed_mask: Path


@dataclass(frozen=True)
class PointPair:
    """One pair in memory. Points are ``(N, 3)`` / ``(L, 3)`` float32 voxel coordinates (row ``i``
    of fixed and moving correspond); ``spacing (3,)`` mm; ``fixed_mask`` ``(*grid_shape)`` bool."""

    pair_id: str
    fixed_keypoints: Tensor
    moving_keypoints: Tensor
    fixed_landmarks: Tensor
    moving_landmarks: Tensor
    spacing: Tensor
    grid_shape: tuple[int, ...]
    fixed_mask: Tensor


def find_evaluation_config(root: Path) -> Path:
    """The single ``*_evaluation_config.json`` in ``root``."""
    configs = sorted(root.glob("*evaluation_config.json"))
    if len(configs) != 1:
        raise RegframeInputError(f"{root}: expected one *evaluation_config.json, found {len(configs)}; "
                                 "name it with the `config` option")
    return configs[0]


def find_point_pairs(root: str | Path, config: str | Path | None = None) -> list[PointPairFiles]:
    """Pairs listed in the evaluation ``config`` (``eval_pairs``; default: the one in ``root``),
    with their keypoint, landmark and mask files checked for existence (nothing is read yet)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise RegframeInputError(f"{root}: point-cloud data folder not found")
    path = Path(config).expanduser().resolve() if config is not None else find_evaluation_config(root)
    if not path.is_file():
        raise RegframeInputError(f"{path}: evaluation config not found")
    try:
        pairs = json.loads(path.read_text())["eval_pairs"]
        names = [(Path(p["fixed"]).name.split(".nii")[0], Path(p["moving"]).name.split(".nii")[0]) for p in pairs]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise RegframeInputError(f"{path}: expected 'eval_pairs' as a list of {{fixed, moving}} image paths "
                                 f"({type(err).__name__}: {err})") from err
    if not names:
        raise RegframeInputError(f"{path}: 'eval_pairs' is empty")
    found = []
    for fixed, moving in names:
        files = PointPairFiles(
            pair_id=f"{subject_id(fixed)}_{subject_id(moving)}",
            fixed_keypoints=root / "keypointsTr" / f"{fixed}.csv", moving_keypoints=root / "keypointsTr" / f"{moving}.csv",
            fixed_landmarks=root / "landmarksTr" / f"{fixed}.csv", moving_landmarks=root / "landmarksTr" / f"{moving}.csv",
            fixed_mask=root / "masksTr" / f"{fixed}.nii.gz")
        for file in (files.fixed_keypoints, files.moving_keypoints, files.fixed_landmarks, files.moving_landmarks,
                     files.fixed_mask):
            if not file.is_file():
                raise RegframeInputError(f"{file}: file not found (pair {files.pair_id} of {path})")
        found.append(files)
    return found


def _corresponding(fixed_path: Path, moving_path: Path) -> tuple[Tensor, Tensor]:
    fixed, moving = read_keypoints(fixed_path), read_keypoints(moving_path)
    if len(fixed) != len(moving):
        raise RegframeInputError(f"{moving_path}: {len(moving)} points, but {fixed_path} has {len(fixed)}; "
                                 "corresponding point files need the same number of rows")
    return fixed, moving


def load_point_pair(files: PointPairFiles) -> PointPair:
    """Read one pair's keypoints, landmarks and fixed mask (which gives grid shape and spacing)."""
    fixed_keypoints, moving_keypoints = _corresponding(files.fixed_keypoints, files.moving_keypoints)
    fixed_landmarks, moving_landmarks = _corresponding(files.fixed_landmarks, files.moving_landmarks)
    mask = read_label(files.fixed_mask)
    shape = mask.array.shape
    for path, points in ((files.fixed_keypoints, fixed_keypoints), (files.moving_keypoints, moving_keypoints),
                         (files.fixed_landmarks, fixed_landmarks), (files.moving_landmarks, moving_landmarks)):
        outside = ((points < -0.5) | (points > torch.tensor(shape) - 0.5)).any(dim=1)
        if outside.any():
            raise RegframeInputError(f"{path}: {int(outside.sum())} points lie outside the {shape} grid of "
                                     f"{files.fixed_mask} (both scans of a pair share it)")
    return PointPair(files.pair_id, fixed_keypoints, moving_keypoints, fixed_landmarks, moving_landmarks,
                     torch.tensor(voxel_spacing(mask.affine), dtype=torch.float32), shape,
                     torch.from_numpy(mask.array > 0))


def voxel_to_mm(points: Tensor, spacing: Tensor) -> Tensor:
    """``points (..., D)`` voxel indices -> mm: ``voxel x spacing`` per axis, origin at voxel 0."""
    return points * spacing.to(points)


def mm_to_voxel(points: Tensor, spacing: Tensor) -> Tensor:
    """Inverse of :func:`voxel_to_mm`."""
    return points / spacing.to(points)


def cloud_sizes(rows: int, fixed_count: int, moving_count: int, disjoint: bool) -> tuple[int, int]:
    """Cloud sizes ``(fixed, moving)`` drawn from ``rows`` corresponding keypoints: the requested
    counts, scaled down by one common factor (the ratio kept) when they do not fit, i.e. when
    ``fixed + moving > rows`` (``disjoint``) or either exceeds ``rows``."""
    if fixed_count < 1 or moving_count < 1:
        raise RegframeInputError(f"fixed_count and moving_count must be >= 1, got {fixed_count} and {moving_count}")
    capacity = fixed_count + moving_count if disjoint else max(fixed_count, moving_count)
    if capacity <= rows:
        return fixed_count, moving_count
    factor = rows / capacity
    return max(1, math.floor(fixed_count * factor)), max(1, math.floor(moving_count * factor))


def draw_clouds(rows: int, fixed_count: int, moving_count: int, disjoint: bool,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Row indices ``(fixed (n_f,), moving (n_m,))`` of two random subsets of ``rows``, each in random
    order; ``disjoint``: no row in both, else the subsets are drawn independently. The moving order
    carries no information about the fixed one."""
    if disjoint and fixed_count + moving_count > rows or max(fixed_count, moving_count) > rows:
        raise ValueError(f"cannot draw {fixed_count} + {moving_count} rows from {rows} (disjoint={disjoint})")
    order = torch.randperm(rows, generator=generator)
    fixed = order[:fixed_count]
    if disjoint:
        moving = order[fixed_count:fixed_count + moving_count]
    else:
        moving = torch.randperm(rows, generator=generator)[:moving_count]
    return fixed, moving


def normalised_to_mm_affine(theta: Tensor, extent: Tensor) -> Tensor:
    """``theta (D, D+1)`` on coordinates normalised to ``[-1, 1]`` over the grid extent (``extent
    (D,)`` mm from voxel 0 to the last voxel) -> the same map on mm coordinates, ``(D+1, D+1)``."""
    dims = extent.numel()
    half = extent.double() / 2
    to_normalised = torch.eye(dims + 1, dtype=torch.float64)
    to_normalised[range(dims), range(dims)] = 1.0 / half
    to_normalised[:dims, dims] = -1.0
    full = torch.eye(dims + 1, dtype=torch.float64)
    full[:dims] = theta.double()
    return torch.linalg.inv(to_normalised) @ full @ to_normalised


def random_point_affines(extent: Tensor, sigma_fixed: float, sigma_moving_extra: float,
                         generator_seed: int) -> tuple[Tensor, Tensor]:
    """Fixed and moving ``(D+1, D+1)`` mm affines of :class:`regframe.augment.PairAffineAugmentation`
    (``A_F = I + N(0, sigma_fixed^2)``, ``A_M = A_F + N(0, sigma_moving_extra^2)`` entry-wise on
    normalised coordinates), expressed in mm over a grid of ``extent (D,)`` mm; float64."""
    augmentation = PairAffineAugmentation(sigma_fixed, sigma_moving_extra, seed=generator_seed)
    theta_fixed, theta_moving = augmentation.sample(1, extent.numel(), "cpu", torch.float64)
    return normalised_to_mm_affine(theta_fixed[0], extent), normalised_to_mm_affine(theta_moving[0], extent)


@dataclass(frozen=True)
class CloudSampling:
    """How one item is drawn: cloud sizes, disjoint subsets, augmentation (``None``: none), and
    ``moving_jitter_mm``: the standard deviation (mm, per axis) of Gaussian noise added to the moving
    cloud, standing in for the localisation error of keypoints detected separately on each scan."""

    fixed_count: int
    moving_count: int
    disjoint: bool = True
    augmentation: tuple[float, float] | None = None  # (sigma_fixed, sigma_moving_extra)
    moving_jitter_mm: float = 0.0


def point_pair_item(pair: PointPair, index: int, sampling: CloudSampling, seed: int, evaluation: bool) -> dict:
    """One batch element of ``pair`` (keys in mm; see :mod:`data_modules.points` for the batch).

    Subsets, their order and the affines come from ``seed`` alone (reproducible). ``evaluation``
    adds what only evaluation may use: ``fixed_points_in_moving`` (the true moving position of each
    fixed point, augmented like the moving cloud) and ``fixed_mask``.
    """
    generator = torch.Generator().manual_seed(seed)
    fixed_rows, moving_rows = draw_clouds(len(pair.fixed_keypoints), sampling.fixed_count, sampling.moving_count,
                                          sampling.disjoint, generator)
    dims = len(pair.grid_shape)
    identity = torch.eye(dims + 1, dtype=torch.float64)
    fixed_affine, moving_affine = identity, identity
    if sampling.augmentation is not None:
        extent = (torch.tensor(pair.grid_shape, dtype=torch.float64) - 1) * pair.spacing.double()
        draw = int(torch.randint(0, 2**62, (1,), generator=generator))
        fixed_affine, moving_affine = random_point_affines(extent, *sampling.augmentation, generator_seed=draw)

    def fixed_side(points: Tensor) -> Tensor:
        return apply_affine(fixed_affine, voxel_to_mm(points.double(), pair.spacing)).float()

    def moving_side(points: Tensor, jitter_mm: float = 0.0) -> Tensor:
        mm = jittered(voxel_to_mm(points.double(), pair.spacing), jitter_mm, generator)
        return apply_affine(moving_affine, mm).float()

    item = {
        "fixed_points": fixed_side(pair.fixed_keypoints[fixed_rows]),
        "moving_points": moving_side(pair.moving_keypoints[moving_rows], sampling.moving_jitter_mm),
        "fixed_point_index": fixed_rows,
        "fixed_landmarks": fixed_side(pair.fixed_landmarks),
        "moving_landmarks": moving_side(pair.moving_landmarks),
        "fixed_affine": fixed_affine.float(),
        "moving_affine": moving_affine.float(),
        "spacing": pair.spacing,
        "grid_shape": torch.tensor(pair.grid_shape),
        "pair_id": pair.pair_id,
        "pair_index": torch.tensor(index),
    }
    if evaluation:
        item["fixed_points_in_moving"] = moving_side(pair.moving_keypoints[fixed_rows])
        item["fixed_mask"] = pair.fixed_mask[None]
    return item


class PointPairDataset(Dataset):
    """Items of ``pairs``; indexed by ``(pair index, seed)`` tuples (see :class:`EpochSeededSampler`)."""

    def __init__(self, pairs: list[PointPair], sampling: CloudSampling, evaluation: bool) -> None:
        self.pairs = pairs
        self.sampling = sampling
        self.evaluation = evaluation

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        return point_pair_item(self.pairs[index], index, self.sampling, seed, self.evaluation)


class EpochSeededSampler(Sampler):
    """Yields ``(pair index, item seed)``: every pair ``repeats`` times per epoch, in random order
    (``shuffle``), each draw with its own seed derived from ``(seed, epoch, position)``. Lightning
    calls :meth:`set_epoch` at every epoch start, so each epoch draws new subsets and affines,
    reproducibly and independently of dataloader workers. Without ``shuffle`` the order and seeds
    are the same every epoch (evaluation)."""

    def __init__(self, count: int, seed: int, repeats: int = 1, shuffle: bool = True) -> None:
        self.count = count
        self.seed = seed
        self.repeats = repeats
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count * self.repeats

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch if self.shuffle else 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        indices = torch.arange(self.count).repeat(self.repeats)
        if self.shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        seeds = torch.randint(0, 2**62, (len(indices),), generator=generator)
        return iter(zip(indices.tolist(), seeds.tolist()))
