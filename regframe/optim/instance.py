"""Instance optimisation (IO) as a configurable module: Adam on a field against feature maps.

The numerical kernel is :func:`regframe.optim.adam.adam_instance_optimisation`; this module holds
its settings (one place for them in code and YAML), the preparation of the features (pooling,
optional per-channel standardisation and scale), the optional final smoothing and, optionally, the
feature extractor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.optim.adam import DATA_TERMS, adam_instance_optimisation
from regframe.optim.smoothing import box_filter, pool

FEATURE_NORMALISATIONS = ("none", "channel")


def standardise_channels(fixed_feat: Tensor, moving_feat: Tensor) -> tuple[Tensor, Tensor]:
    """``(f - mu_c) / sigma_c`` for both feature maps ``(B, C, *G)``: mean and standard deviation
    of every channel over the voxels of both images of each pair, detached. A constant channel
    (sigma 0) becomes 0."""
    voxels = torch.cat([fixed_feat.detach().flatten(2), moving_feat.detach().flatten(2)], dim=2)
    view = (*fixed_feat.shape[:2],) + (1,) * (fixed_feat.dim() - 2)
    mean = voxels.mean(2).view(view)
    std = voxels.std(2, unbiased=False).view(view)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (fixed_feat - mean) / std, (moving_feat - mean) / std


class InstanceOptimisation(nn.Module):
    """Fine-tune a displacement field with Adam on features of the fixed and moving images.

    Args:
        features: extractor ``(B, 1, *S) -> (B, C, *S')`` (e.g. MIND-SSC); ``None``: the wrapped
            estimator supplies its own through ``io_features`` (see
            :class:`regframe.estimators.protocols.IOFeatureSource`).
        similarity: data term, ``"ssd"`` (mean squared difference) or ``"neg_cos"`` (negative mean
            cosine similarity over channels).
        grid_spacing: the features are average-pooled by this factor (in feature voxels) to form the
            optimisation grid; 1 = the features' own grid.
        iterations: Adam iterations; 0 leaves the field unchanged (no IO).
        lr: Adam learning rate (voxels of the optimisation grid per step, roughly).
        data_weight, smooth_weight: weights of the data term and of the diffusion term (mean squared
            forward differences of the field on the optimisation grid, voxels²).
        smooth_pools: k3 box filters applied to the parameter field in every iteration.
        feature_normalisation: ``"none"`` (the features as they come) or ``"channel"``: after
            pooling, every channel is standardised with its mean and standard deviation over both
            images of the pair, so the data/smoothness balance no longer depends on the feature
            extractor's activation scale.
        feature_scale: factor on the (pooled, possibly standardised) features; the CST reference
            code uses 5. With ``"ssd"`` it multiplies the data term by its square.
        final_smoothing: box-filter passes of width ``final_smoothing_kernel`` applied to the
            optimised field on the grid of the starting field (the ConvexAdam/CST reference: 3 passes
            of width 5 at full resolution); 0: none. Borders average over in-grid neighbours.
        final_smoothing_kernel: width of those box filters (odd, voxels).
        foreground_threshold: evaluate the data term only in the foreground of the fixed image,
            grown by ``foreground_margin`` voxels of the optimisation grid (``None``: everywhere).
            Foreground: intensity above ``min + threshold · (p99 − min)`` of the fixed image (p99: its
            99th percentile). Where both images are uniform background the data term is constant,
            so this only skips work there (CT air, MRI background: 40–70 % of the grid).
        foreground_margin: dilation of that mask (voxels of the optimisation grid).
    """

    def __init__(self, features: nn.Module | None = None, similarity: str = "ssd", grid_spacing: int = 1,
                 iterations: int = 50, lr: float = 1.0, data_weight: float = 12.0, smooth_weight: float = 0.65,
                 smooth_pools: int = 3, feature_normalisation: str = "none", feature_scale: float = 1.0,
                 final_smoothing: int = 0, final_smoothing_kernel: int = 5, foreground_threshold: float | None = None,
                 foreground_margin: int = 2) -> None:
        super().__init__()
        if similarity not in DATA_TERMS:
            raise RegframeInputError(f"InstanceOptimisation: similarity must be one of {DATA_TERMS}, got {similarity!r}")
        if grid_spacing < 1 or iterations < 0:
            raise RegframeInputError(f"InstanceOptimisation: grid_spacing ({grid_spacing}) must be >= 1 and "
                                     f"iterations ({iterations}) >= 0")
        if feature_normalisation not in FEATURE_NORMALISATIONS:
            raise RegframeInputError(f"InstanceOptimisation: feature_normalisation must be one of "
                                     f"{FEATURE_NORMALISATIONS}, got {feature_normalisation!r}")
        if not feature_scale > 0:
            raise RegframeInputError(f"InstanceOptimisation: feature_scale must be > 0, got {feature_scale}")
        if final_smoothing < 0 or final_smoothing_kernel < 1 or final_smoothing_kernel % 2 == 0:
            raise RegframeInputError(f"InstanceOptimisation: final_smoothing ({final_smoothing}) must be >= 0 and "
                                     f"final_smoothing_kernel ({final_smoothing_kernel}) odd and >= 1")
        if foreground_threshold is not None and not 0 <= foreground_threshold < 1 or foreground_margin < 0:
            raise RegframeInputError(f"InstanceOptimisation: foreground_threshold ({foreground_threshold}) must be in "
                                     f"[0, 1) or None and foreground_margin ({foreground_margin}) >= 0")
        self.features = features
        self.similarity = similarity
        self.grid_spacing = grid_spacing
        self.iterations = iterations
        self.lr = lr
        self.data_weight = data_weight
        self.smooth_weight = smooth_weight
        self.smooth_pools = smooth_pools
        self.feature_normalisation = feature_normalisation
        self.feature_scale = feature_scale
        self.final_smoothing = final_smoothing
        self.final_smoothing_kernel = final_smoothing_kernel
        self.foreground_threshold = foreground_threshold
        self.foreground_margin = foreground_margin

    def with_iterations(self, iterations: int) -> InstanceOptimisation:
        """The same settings (and the same ``features`` module) with another number of iterations."""
        return InstanceOptimisation(self.features, self.similarity, self.grid_spacing, iterations, self.lr,
                                    self.data_weight, self.smooth_weight, self.smooth_pools,
                                    self.feature_normalisation, self.feature_scale, self.final_smoothing,
                                    self.final_smoothing_kernel, self.foreground_threshold, self.foreground_margin)

    def prepare_features(self, fixed_feat: Tensor, moving_feat: Tensor) -> tuple[Tensor, Tensor]:
        """The features Adam compares, ``(B, C, *G')``: pooled by ``grid_spacing``, standardised
        per channel if ``feature_normalisation="channel"``, multiplied by ``feature_scale``."""
        fixed_feat, moving_feat = pool(fixed_feat, self.grid_spacing), pool(moving_feat, self.grid_spacing)
        if self.feature_normalisation == "channel":
            fixed_feat, moving_feat = standardise_channels(fixed_feat, moving_feat)
        if self.feature_scale != 1.0:
            fixed_feat, moving_feat = fixed_feat * self.feature_scale, moving_feat * self.feature_scale
        return fixed_feat, moving_feat

    def data_mask(self, fixed: Tensor, grid: tuple[int, ...]) -> Tensor | None:
        """Bool ``(*grid)``: where the data term is evaluated (see ``foreground_threshold``), the union
        over the batch of ``fixed (B, 1, *S)``; ``None`` without a threshold."""
        if self.foreground_threshold is None:
            return None
        flat = fixed.detach().float().flatten(1)
        sample = flat[:, ::max(flat.shape[1] // 1_000_000, 1)]  # the percentile from about 1M voxels
        low = sample.min(dim=1).values
        high = torch.quantile(sample, 0.99, dim=1)
        level = (low + self.foreground_threshold * (high - low)).view(-1, *([1] * (fixed.dim() - 1)))
        foreground = (fixed > level).float().amax(dim=0, keepdim=True)
        dims = fixed.dim() - 2
        adaptive = F.adaptive_max_pool3d if dims == 3 else F.adaptive_max_pool2d
        mask = adaptive(foreground, grid)
        if self.foreground_margin:
            pool = F.max_pool3d if dims == 3 else F.max_pool2d
            mask = pool(mask, 2 * self.foreground_margin + 1, stride=1, padding=self.foreground_margin)
        return mask[0, 0] > 0

    def forward(self, disp: Tensor, fixed_feat: Tensor, moving_feat: Tensor, fixed: Tensor | None = None) -> Tensor:
        """Optimised field ``(B, D, *S)`` in voxels of the grid of ``disp`` (detached).

        ``disp (B, D, *S)`` is the starting field; ``fixed_feat`` and ``moving_feat`` ``(B, C, *G)``
        are the features before pooling by ``grid_spacing``; ``fixed (B, 1, *S')``, the fixed image,
        is needed with ``foreground_threshold``. Works inside ``no_grad``.
        """
        if self.iterations == 0:
            return disp
        fixed_feat, moving_feat = self.prepare_features(fixed_feat, moving_feat)
        mask = None
        if self.foreground_threshold is not None:
            if fixed is None:
                raise RegframeInputError("InstanceOptimisation: foreground_threshold needs the fixed image")
            mask = self.data_mask(fixed, tuple(fixed_feat.shape[2:]))
        field = adam_instance_optimisation(
            disp, fixed_feat, moving_feat,
            iterations=self.iterations, lr=self.lr, data_weight=self.data_weight,
            smooth_weight=self.smooth_weight, data_term=self.similarity, smooth_pools=self.smooth_pools,
            data_mask=mask)
        return box_filter(field, self.final_smoothing, self.final_smoothing_kernel)
