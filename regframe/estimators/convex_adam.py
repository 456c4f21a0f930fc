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
from regframe.estimators.refine import Refined
from regframe.features.mind import MINDSSC
from regframe.optim.instance import InstanceOptimisation


def convex_adam(features: nn.Module | None = None, mind_radius: int = 1, mind_dilation: int = 2,
                grid_spacing: int = 6, search_radius: int = 4, ice: bool = True, io_iterations: int = 80,
                slab_size: int | None = 16) -> Refined:
    """ConvexAdam with its published defaults: a single-level :class:`CorrelationPyramidEstimator`
    (``features`` default MIND-SSC with ``mind_radius``/``mind_dilation``) inside
    :class:`~regframe.estimators.refine.Refined` with ``io_iterations`` of Adam IO on the pyramid's
    features pooled by 2 (lr 1, data weight 12, smooth weight 1.25, three box filters)."""
    pyramid = CorrelationPyramidEstimator(
        features=features if features is not None else MINDSSC(mind_radius, mind_dilation),
        grid_spacing=grid_spacing, levels=(1,), radii=(search_radius,), metric="ssd", box_filters=2,
        smooth_iters=1, schedule=CONVEX_SCHEDULE, ice=ice, slab_size=slab_size)
    return Refined(pyramid, InstanceOptimisation(similarity="ssd", grid_spacing=2, iterations=io_iterations, lr=1.0,
                                                 data_weight=12.0, smooth_weight=1.25, smooth_pools=3))
