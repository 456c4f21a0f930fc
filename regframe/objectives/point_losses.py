"""Losses on point clouds for metric supervision (Hansen & Heinrich's baseline, CST paper Table 3).

- :func:`chamfer_distance`: ``½ (mean_a min_b ‖a − b‖² + mean_b min_a ‖a − b‖²)`` in mm², symmetric.
- :func:`local_laplacian`: ``mean_i ‖u_i − mean_{j ∈ kNN(i)} u_j‖²`` in mm² on the kNN graph of the points.
"""

from __future__ import annotations

from torch import Tensor

from regframe.features.graph_cnn import gather_neighbours, knn_graph
from regframe.optim.sparse_lbp import squared_distances


def chamfer_distance(first: Tensor, second: Tensor) -> Tensor:
    """Symmetric squared Chamfer distance (mm²) between clouds ``first (B, N, 3)`` and ``second (B, M, 3)``
    (mm): the mean over both clouds' points of the squared distance to the nearest point of the other
    cloud, the two directions weighted equally; averaged over the batch. Zero for identical clouds."""
    squared = squared_distances(first, second)  # (B, N, M)
    return 0.5 * (squared.amin(dim=2).mean() + squared.amin(dim=1).mean())


def local_laplacian(points: Tensor, displacements: Tensor, k: int) -> Tensor:
    """``mean_i ‖u_i − mean_{j ∈ kNN(i)} u_j‖²`` (mm²) for ``displacements (B, N, 3)`` mm at ``points (B, N, 3)``
    mm, with ``kNN(i)`` the ``k`` nearest other points of ``i``. Zero for a constant field."""
    neighbours = gather_neighbours(displacements, knn_graph(points, k))  # (B, N, k, 3)
    return (displacements - neighbours.mean(dim=2)).square().sum(dim=-1).mean()
