"""CST estimator ``f = h∘g``: CNN features, SAD correlation, differentiable coupled convex optimisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.features.cnn import CSTFeatureNet
from regframe.optim.convex import soft_coupled_convex
from regframe.optim.correlation import cost_volume, displacement_offsets
from regframe.optim.upsample import upsample_field


class FeatureConvexEstimator(DisplacementEstimator):
    """``u = up(h(g(F), g(M)))``: features from ``feature_net`` (default :class:`CSTFeatureNet`),
    a cost volume over ``(2 radius + 1)^D`` displacements (``metric``, features times
    ``feature_scale``, ``box_filters`` box filters), the soft coupled convex optimiser
    (``schedule``, ``temperature``, ``smooth_iters``) on the feature grid, and the CST upsampling
    chain (x2 + two k3 box filters, twice, then linear) to the requested grid.

    The feature network may run under autocast (AMP); the correlation and optimiser always run in
    float32. Fully differentiable. Implements the wrappers' protocols
    (:mod:`regframe.estimators.protocols`): ``coarse_fields``/``upsample`` (inverse consistency on the
    feature grid) and ``io_features`` (the feature network's IO head, when it has one).
    """

    def __init__(self, feature_net: nn.Module | None = None, radius: int = 2, metric: str = "sad",
                 feature_scale: float = 5.0, box_filters: int = 1,
                 schedule: Sequence[float] = (0.003, 0.03, 0.3), temperature: float = 20.0,
                 smooth_iters: int = 1, slab_size: int | None = None) -> None:
        super().__init__()
        self.feature_net = feature_net if feature_net is not None else CSTFeatureNet()
        self.radius = radius
        self.metric = metric
        self.feature_scale = feature_scale
        self.box_filters = box_filters
        self.schedule = tuple(schedule)
        self.temperature = temperature
        self.smooth_iters = smooth_iters
        self.slab_size = slab_size

    def coarse_from_features(self, fixed_feat: Tensor, moving_feat: Tensor) -> Tensor:
        """Field ``(B, D, *G)`` in voxels of the feature grid ``G`` from two feature maps ``(B, C, *G)``."""
        with torch.autocast(device_type=fixed_feat.device.type, enabled=False):
            cost = cost_volume(fixed_feat.float(), moving_feat.float(), self.radius, self.metric,
                               self.feature_scale, self.box_filters, self.slab_size)
            offsets = displacement_offsets(self.radius, fixed_feat.dim() - 2, device=cost.device)
            return soft_coupled_convex(cost, offsets, self.schedule, self.temperature, self.smooth_iters)

    def pair_features(self, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor]:
        """Correlation features of both images: in training mode in one batch (shared BatchNorm
        statistics), in eval mode each image on its own (the same values, no concatenated copy)."""
        if not self.training:
            return self.feature_net(fixed), self.feature_net(moving)
        feats = self.feature_net(torch.cat([fixed, moving], dim=0))
        return feats[: fixed.shape[0]], feats[fixed.shape[0]:]

    def coarse(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Field on the feature grid, in its voxels."""
        return self.coarse_from_features(*self.pair_features(fixed, moving))

    def coarse_fields(self, fixed: Tensor, moving: Tensor) -> tuple[Tensor, Tensor]:
        """Forward and backward fields ``(B, D, *G)`` on the feature grid from one feature pass."""
        fixed_feat, moving_feat = self.pair_features(fixed, moving)
        return self.coarse_from_features(fixed_feat, moving_feat), self.coarse_from_features(moving_feat, fixed_feat)

    def upsample(self, field: Tensor, size: Sequence[int]) -> Tensor:
        """The CST upsampling chain from the feature grid to ``size``."""
        return upsample_field(field, size)

    def io_features(self, image: Tensor) -> Tensor:
        """Instance-optimisation features ``(B, io_channels, *G)`` from ``feature_net.io_features``."""
        if not hasattr(self.feature_net, "io_features"):
            raise RegframeInputError(f"feature_net {type(self.feature_net).__name__} has no io_features head; "
                                     "give InstanceOptimisation a features module instead")
        return self.feature_net.io_features(image)

    def forward(self, fixed: Tensor, moving: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Field ``(B, D, *output_size)`` (default: the input grid) in voxels of that grid."""
        size = tuple(output_size) if output_size is not None else tuple(fixed.shape[2:])
        return self.upsample(self.coarse(fixed, moving), size)
