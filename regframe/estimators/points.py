"""The point-cloud counterpart of :class:`~regframe.estimators.base.DisplacementEstimator`.

``displacements = estimator(fixed_points, moving_points)``: clouds ``(B, N, 3)`` and ``(B, M, 3)`` in
mm on the fixed and moving scans' mm frames (already pre-aligned, no correspondence between the
rows); the result ``(B, N, 3)`` mm is, for each fixed point ``x``, the vector to its corresponding
moving position ``x + u(x)`` — the sparse samples of a backward map on the fixed grid. A dense
field in voxels comes from :func:`regframe.point_fields.dense_field`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.features.graph_cnn import GraphFeatureNet
from regframe.optim.sparse_lbp import SparseLBP


class PointDisplacementEstimator(nn.Module, ABC):
    """Maps fixed and moving clouds (mm) to displacements ``(B, N, 3)`` mm at the fixed points."""

    @abstractmethod
    def forward(self, fixed_points: Tensor, moving_points: Tensor) -> Tensor:
        """Return the displacement ``(B, N, 3)`` mm of every fixed point towards the moving cloud."""


class IdentityPointEstimator(PointDisplacementEstimator):
    """Zero displacements: the 'initial alignment' baseline."""

    def forward(self, fixed_points: Tensor, moving_points: Tensor) -> Tensor:
        return fixed_points.new_zeros(fixed_points.shape)


class PointCloudEstimator(PointDisplacementEstimator):
    """Graph CNN features of both clouds (shared weights) followed by sparse LBP (Hansen & Heinrich).

    ``feature_net`` maps ``(B, N, 3)`` mm to ``(B, N, C)``; ``optimiser`` turns clouds and features into
    displacements. Both are differentiable, so the estimator trains end to end on displacement labels.
    ``align_centroids``: translate the moving cloud so that its centroid meets the fixed cloud's before
    the candidates are chosen, and add that translation to the result (the paper pre-aligns the scans
    by their lung masks; a keypoint cloud's centroid is the analogue here). It moves the candidate
    set (the capture range of the L nearest moving points) onto the bulk motion; the graph CNN
    features are translation-invariant and do not change.
    """

    def __init__(self, feature_net: nn.Module | None = None, optimiser: SparseLBP | None = None,
                 align_centroids: bool = False) -> None:
        super().__init__()
        self.feature_net = feature_net if feature_net is not None else GraphFeatureNet()
        self.optimiser = optimiser if optimiser is not None else SparseLBP()
        self.align_centroids = align_centroids

    def forward(self, fixed_points: Tensor, moving_points: Tensor) -> Tensor:
        """``fixed_points (B, N, 3)``, ``moving_points (B, M, 3)`` mm -> displacements ``(B, N, 3)`` mm."""
        for name, cloud in (("fixed_points", fixed_points), ("moving_points", moving_points)):
            if cloud.dim() != 3 or cloud.shape[-1] != 3:
                raise RegframeInputError(f"PointCloudEstimator: {name} must be (B, N, 3) in mm, "
                                         f"got {tuple(cloud.shape)}")
        if fixed_points.shape[0] != moving_points.shape[0]:
            raise RegframeInputError(f"PointCloudEstimator: batch sizes differ: fixed_points {fixed_points.shape[0]}, "
                                     f"moving_points {moving_points.shape[0]}")
        shift = (moving_points.mean(dim=1, keepdim=True) - fixed_points.mean(dim=1, keepdim=True)
                 if self.align_centroids else moving_points.new_zeros(1, 1, 3))
        fixed_features = self.feature_net(fixed_points)
        moving_features = self.feature_net(moving_points)
        return shift + self.optimiser(fixed_points, moving_points - shift, fixed_features, moving_features)
