"""Instance optimisation (IO) as a configurable module: Adam on a field against feature maps.

The numerical kernel is :func:`regframe.optim.adam.adam_instance_optimisation`; this module holds
its settings (one place for them in code and YAML) and, optionally, the feature extractor.
"""

from __future__ import annotations

from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.optim.adam import DATA_TERMS, adam_instance_optimisation
from regframe.optim.smoothing import pool


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
    """

    def __init__(self, features: nn.Module | None = None, similarity: str = "ssd", grid_spacing: int = 1,
                 iterations: int = 50, lr: float = 1.0, data_weight: float = 12.0, smooth_weight: float = 0.65,
                 smooth_pools: int = 3) -> None:
        super().__init__()
        if similarity not in DATA_TERMS:
            raise RegframeInputError(f"InstanceOptimisation: similarity must be one of {DATA_TERMS}, got {similarity!r}")
        if grid_spacing < 1 or iterations < 0:
            raise RegframeInputError(f"InstanceOptimisation: grid_spacing ({grid_spacing}) must be >= 1 and "
                                     f"iterations ({iterations}) >= 0")
        self.features = features
        self.similarity = similarity
        self.grid_spacing = grid_spacing
        self.iterations = iterations
        self.lr = lr
        self.data_weight = data_weight
        self.smooth_weight = smooth_weight
        self.smooth_pools = smooth_pools

    def with_iterations(self, iterations: int) -> "InstanceOptimisation":
        """The same settings (and the same ``features`` module) with another number of iterations."""
        return InstanceOptimisation(self.features, self.similarity, self.grid_spacing, iterations, self.lr,
                                    self.data_weight, self.smooth_weight, self.smooth_pools)

    def forward(self, disp: Tensor, fixed_feat: Tensor, moving_feat: Tensor) -> Tensor:
        """Optimised field ``(B, D, *S)`` in voxels of the grid of ``disp`` (detached).

        ``disp (B, D, *S)`` is the starting field; ``fixed_feat`` and ``moving_feat`` ``(B, C, *G)``
        are the features before pooling by ``grid_spacing``. Works inside ``no_grad``.
        """
        if self.iterations == 0:
            return disp
        return adam_instance_optimisation(
            disp, pool(fixed_feat, self.grid_spacing), pool(moving_feat, self.grid_spacing),
            iterations=self.iterations, lr=self.lr, data_weight=self.data_weight,
            smooth_weight=self.smooth_weight, data_term=self.similarity, smooth_pools=self.smooth_pools)
