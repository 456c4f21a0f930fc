"""ConvexAdam-style registration (Siebert, Hansen & Heinrich): one level of coupled convex
optimisation on MIND-SSC, then Adam instance optimisation; training-free.

Defaults are those of the published ``convexAdam`` package (``convex_adam_pt``): MIND-SSC with
radius 1 and dilation 2 on the full-resolution image; features average-pooled to grid spacing 6;
SSD cost over a search half-width of 4 grid voxels (729 labels), each cost map box-filtered twice;
hard coupled convex optimisation with schedule ``{0.003, 0.01, 0.03, 0.1, 0.3, 1}`` and one box
filter per round; inverse consistency (15 iterations); Adam IO on features pooled to grid spacing
2, 80 iterations, lr 1, data ``12 · mean SSD``, diffusion weight ``λ = 1.25``, parameter smoothed
by three box filters. The package's penalty and ICE work in the same voxel units as here.
"""

from __future__ import annotations

from torch import nn

from regframe.estimators.pyramid import CONVEX_SCHEDULE, CorrelationPyramidEstimator
from regframe.features.mind import MINDSSC


class ConvexAdamEstimator(CorrelationPyramidEstimator):
    """Single-level :class:`CorrelationPyramidEstimator` with ConvexAdam's published defaults."""

    def __init__(self, features: nn.Module | None = None, mind_radius: int = 1, mind_dilation: int = 2,
                 grid_spacing: int = 6, search_radius: int = 4, ice: bool = True, adam_iterations: int = 80,
                 adam_grid_spacing: int = 2, adam_lr: float = 1.0, adam_smooth_weight: float = 1.25,
                 slab_size: int | None = 16) -> None:
        super().__init__(
            features=features if features is not None else MINDSSC(mind_radius, mind_dilation),
            grid_spacing=grid_spacing, levels=(1,), radii=(search_radius,), metric="ssd", box_filters=2,
            smooth_iters=1, schedule=CONVEX_SCHEDULE, ice=ice, adam_iterations=adam_iterations,
            adam_grid_spacing=adam_grid_spacing, adam_lr=adam_lr, adam_smooth_weight=adam_smooth_weight,
            adam_data_weight=12.0, adam_data_term="ssd", slab_size=slab_size)
