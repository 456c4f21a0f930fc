"""Coarse-to-fine correlation pyramid with coupled convex optimisation (SAMConvex-style), training-free.

At each level (coarsest first) the moving image is warped with the field found so far, features
of the warped image are computed and average-pooled to the level's grid, a cost volume over a
small search radius is built against the fixed features, the hard coupled convex optimisation
picks a smooth displacement ``d`` on that grid, and the total field becomes
``u = d + u∘(id + d)`` (:func:`regframe.spatial.compose`). Optionally the step is made inverse
consistent (ICE). Adam instance optimisation goes around the pyramid
(``Refined(pyramid, InstanceOptimisation(...))``), on the pyramid's features (``io_features``) unless
the IO has its own. The feature extractor is injected: MIND-SSC, a learned embedding, or any module
mapping ``(B, 1, *S) -> (B, C, *S')``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.features.mind import MINDSSC
from regframe.optim.consistency import inverse_consistent
from regframe.optim.convex import hard_coupled_convex
from regframe.optim.correlation import cost_volume, displacement_offsets
from regframe.optim.smoothing import pool
from regframe.spatial import compose, resize_field, warp

CONVEX_SCHEDULE = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


class CorrelationPyramidEstimator(DisplacementEstimator):
    """Training-free coarse-to-fine discrete registration on injected features.

    Args:
        features: feature extractor ``(B, 1, *S) -> (B, C, *S')``; default MIND-SSC (r 1, d 2).
        image_resample_factor: images are average-pooled to this resolution factor before feature
            extraction (0.5 = half; cheaper learned features on CPU); ``1 / factor`` must be an integer.
        grid_spacing: the features are pooled by this factor to form the finest level's grid
            (ConvexAdam 6).
        levels: pooling factor of each level relative to that finest grid, coarsest first
            (SAMConvex: 1/4, 1/2, full = ``(4, 2, 1)``).
        radii: search radius per level in voxels of that level (SAMConvex ``(2, 3, 3)``).
        metric: cost of :func:`regframe.optim.correlation.cost_volume` (``"ssd"`` for MIND,
            ``"neg_dot"`` for normalised embeddings).
        box_filters: box filters applied to each cost map (ConvexAdam 2 for SSD).
        smooth_iters: box filters of the field after each convex round (SAMConvex 3, ConvexAdam 1).
        schedule: coupling weights of the hard convex optimisation (voxel units).
        ice: make each level's step inverse consistent with the reverse problem (15 iterations).
        slab_size: axis-0 slab (voxels of the level grid) for the cost volume and convex search.
        recompute_features: at each finer level compute the features of the warped moving image
            (SAMConvex); ``False`` warps the moving features instead (one extraction per image,
            much cheaper for expensive extractors).
        coarse_composition: (with ``recompute_features=False``) keep the field on the finest level's
            grid (the features pooled by ``grid_spacing``): the moving features are pooled once and
            warped there, the steps are composed there, and the field is upsampled to the image grid
            once at the end. ``False`` warps the full-resolution features and composes on the image
            grid at every level (several times the memory traffic; slightly different numerics).
        min_level_cells: a level whose grid has fewer cells than this along its shortest axis is
            skipped (the finest level always runs). On small volumes a coarse level of a few cells
            searches a large fraction of the field of view on features averaged over whole organs and
            locks onto wrong matches that the finer levels cannot undo. 1 runs every level.
    """

    def __init__(self, features: nn.Module | None = None, image_resample_factor: float = 1.0, grid_spacing: int = 2,
                 levels: Sequence[int] = (4, 2, 1), radii: Sequence[int] = (2, 3, 3), metric: str = "ssd",
                 box_filters: int = 1, smooth_iters: int = 1, schedule: Sequence[float] = CONVEX_SCHEDULE,
                 ice: bool = False, slab_size: int | None = 16, recompute_features: bool = True,
                 coarse_composition: bool = False, min_level_cells: int = 1) -> None:
        super().__init__()
        if len(levels) != len(radii) or not levels:
            raise RegframeInputError(f"levels {tuple(levels)} and radii {tuple(radii)} must be non-empty and of equal length")
        image_pooling = round(1.0 / image_resample_factor) if image_resample_factor > 0 else 0
        if image_pooling < 1 or abs(image_pooling * image_resample_factor - 1.0) > 1e-6:
            raise RegframeInputError(f"image_resample_factor must be 1/n for an integer n >= 1, got {image_resample_factor}")
        self.features = features if features is not None else MINDSSC()
        self.image_resample_factor = image_resample_factor
        self.image_pooling = image_pooling
        self.grid_spacing = grid_spacing
        self.levels = tuple(int(v) for v in levels)
        self.radii = tuple(int(v) for v in radii)
        self.metric = metric
        self.box_filters = box_filters
        self.smooth_iters = smooth_iters
        self.schedule = tuple(schedule)
        self.ice = ice
        self.slab_size = slab_size
        if coarse_composition and recompute_features:
            raise RegframeInputError("coarse_composition needs recompute_features=False (it warps pooled features)")
        self.recompute_features = recompute_features
        self.coarse_composition = coarse_composition
        if min_level_cells < 1:
            raise RegframeInputError(f"min_level_cells must be >= 1, got {min_level_cells}")
        self.min_level_cells = min_level_cells

    def extract(self, image: Tensor) -> Tensor:
        """Features of ``image (B, 1, *S)`` pooled to ``image_resample_factor`` (before ``grid_spacing``)."""
        return self.features(pool(image, self.image_pooling))

    def io_features(self, image: Tensor) -> Tensor:
        """The pyramid's features (:meth:`extract`) serve instance optimisation."""
        return self.extract(image)

    def active_levels(self, feature_shape: Sequence[int]) -> list[tuple[int, int]]:
        """The ``(factor, radius)`` pairs that run on features of spatial shape ``feature_shape``:
        every level whose grid (``ceil(size / (grid_spacing * factor))`` cells per axis) has at least
        ``min_level_cells`` cells along its shortest axis, and always the finest level."""
        levels = list(zip(self.levels, self.radii))
        kept = [(factor, radius) for factor, radius in levels[:-1]
                if min(math.ceil(size / (self.grid_spacing * factor)) for size in feature_shape) >= self.min_level_cells]
        return kept + levels[-1:]

    def _level_step(self, fixed_feat: Tensor, moving_feat: Tensor, radius: int) -> Tensor:
        """Convex-optimised displacement ``(B, D, *G)`` in voxels of the level grid ``G``."""
        offsets = displacement_offsets(radius, fixed_feat.dim() - 2, device=fixed_feat.device, dtype=fixed_feat.dtype)

        def solve(a: Tensor, b: Tensor) -> Tensor:
            cost = cost_volume(a, b, radius, metric=self.metric, box_filters=self.box_filters,
                               slab_size=self.slab_size)
            return hard_coupled_convex(cost, offsets, self.schedule, self.smooth_iters, slab_size=self.slab_size)

        step = solve(fixed_feat, moving_feat)
        if self.ice:
            step = inverse_consistent(step, solve(moving_feat, fixed_feat))
        return step

    @torch.no_grad()
    def field_and_features(self, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The field ``(B, D, *G)`` in voxels of its grid ``G`` (the image grid, or with
        ``coarse_composition`` the finest level's grid) and the features of ``fixed`` and ``moving``
        (:meth:`extract`), so that instance optimisation reuses them instead of extracting again."""
        if fixed.shape != moving.shape:
            raise RegframeInputError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must share a grid")
        fixed_feat = self.extract(fixed)
        moving_feat = self.extract(moving)
        if self.coarse_composition:
            return self._coarse_field(fixed_feat, moving_feat), fixed_feat, moving_feat
        shape = fixed.shape[2:]
        disp = fixed.new_zeros(fixed.shape[0], len(shape), *shape)
        for index, (factor, radius) in enumerate(self.active_levels(fixed_feat.shape[2:])):
            if index == 0:
                warped_feat = moving_feat
            elif self.recompute_features:
                warped_feat = self.extract(warp(moving, disp))
            else:
                warped_feat = warp(moving_feat, resize_field(disp, moving_feat.shape[2:]))
            spacing = self.grid_spacing * factor
            step = self._level_step(pool(fixed_feat, spacing), pool(warped_feat, spacing), radius)
            disp = compose(disp, resize_field(step, shape))
        return disp, fixed_feat, moving_feat

    def _coarse_field(self, fixed_feat: Tensor, moving_feat: Tensor) -> Tensor:
        """``coarse_composition``: every level on the features pooled by ``grid_spacing`` (grid ``G``);
        returns the composed field ``(B, D, *G)`` in voxels of ``G``."""
        fixed_grid, moving_grid = pool(fixed_feat, self.grid_spacing), pool(moving_feat, self.grid_spacing)
        grid = fixed_grid.shape[2:]
        disp = fixed_grid.new_zeros(fixed_grid.shape[0], len(grid), *grid)
        for index, (factor, radius) in enumerate(self.active_levels(fixed_feat.shape[2:])):
            warped = moving_grid if index == 0 else warp(moving_grid, disp)
            step = self._level_step(pool(fixed_grid, factor), pool(warped, factor), radius)
            disp = compose(disp, resize_field(step, grid))
        return disp

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Field ``(B, D, *S)`` in voxels of the image grid ``S``."""
        return resize_field(self.field_and_features(fixed, moving)[0], fixed.shape[2:])


MIND_LEVELS = ((4, 3), (2, 2), (1, 1))  # (pooling factor on the 2-voxel grid, search radius), coarsest first


def mind_pyramid(smooth_iters: int = 2, min_level_cells: int = 1, levels: Sequence[tuple[int, int]] = MIND_LEVELS,
                 features: nn.Module | None = None, ice: bool = False) -> CorrelationPyramidEstimator:
    """CPU-fast pyramid on MIND-SSC (ConvexAdam's r 1, d 2 on the full-resolution image, extracted
    once per image; the field is composed on the finest level's grid, see ``coarse_composition``).
    Levels (:data:`MIND_LEVELS`) on grids of 8, 4 and 2 image voxels with radii 3, 2, 1 (search reach
    8·3 + 4·2 + 2·1 = 34 voxels per axis), SSD cost box-filtered twice, ``smooth_iters`` box filters
    per convex round. ``levels`` runs a subset; ``features`` replaces the MIND-SSC module (e.g. one
    shared through :class:`regframe.features.reuse.ReuseFeatures`); ``ice`` makes every level's step
    inverse consistent (about twice the convex work). The registry's ``pyramid_mind``
    adds 20 Adam IO iterations on the 2-voxel grid around it."""
    return CorrelationPyramidEstimator(
        features=features if features is not None else MINDSSC(radius=1, dilation=2), grid_spacing=2,
        levels=[factor for factor, _ in levels], radii=[radius for _, radius in levels], metric="ssd",
        box_filters=2, smooth_iters=smooth_iters, ice=bool(ice), recompute_features=False, coarse_composition=True,
        min_level_cells=min_level_cells)
