"""Graph CNN on point clouds (Hansen & Heinrich, IPMI 2021; edge convolutions as in DGCNN).

A static kNN graph is built on the coordinates of each cloud. Every :class:`EdgeConv` layer maps
the edge features ``[h_i, h_j − h_i]`` of point ``i`` and each neighbour ``j`` through a shared MLP
and takes the maximum over the ``k`` neighbours. The first layer sees only the relative positions
``(x_j − x_i) / length_scale`` (mm / mm), so the features are exactly invariant to translating the
cloud, and equivariant to the order of the points (permuting the input permutes the output). There
is no normalisation layer: a point's features depend only on its graph neighbourhood (a few hops),
the same in training and evaluation and for clouds of any density, and they keep the mm scale
(``length_scale`` sets it), which per-cloud normalisation would remove.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError


def knn(query: Tensor, reference: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest ``reference (B, M, D)`` points of every ``query (B, N, D)`` point.

    Returns ``indices (B, N, k)`` into ``reference`` and squared distances ``(B, N, k)``, nearest first.
    """
    if k > reference.shape[1]:
        raise RegframeInputError(f"k={k} neighbours asked for, but the cloud has only {reference.shape[1]} points")
    squared = torch.cdist(query, reference).square()
    distances, indices = torch.topk(squared, k, dim=-1, largest=False, sorted=True)
    return indices, distances


def knn_graph(points: Tensor, k: int) -> Tensor:
    """Indices ``(B, N, k)`` of the ``k`` nearest other points of every point of ``points (B, N, D)``."""
    indices, _ = knn(points, points, k + 1)
    return indices[..., 1:]  # the nearest is the point itself


def gather_neighbours(values: Tensor, graph: Tensor) -> Tensor:
    """``values (B, N, C)`` at the neighbours ``graph (B, N', k)``: ``(B, N', k, C)``."""
    batch = torch.arange(values.shape[0], device=values.device).view(-1, 1, 1)
    return values[batch, graph]


class EdgeConv(nn.Module):
    """``h'_i = max_j MLP([h_i, h_j − h_i])`` over the neighbours ``j`` of ``i`` (``relative_only``:
    ``MLP(h_j − h_i)``). Linear → LeakyReLU, ``len(channels)`` times."""

    def __init__(self, in_channels: int, channels: Sequence[int], relative_only: bool = False) -> None:
        super().__init__()
        self.relative_only = relative_only
        layers: list[nn.Module] = []
        width = in_channels if relative_only else 2 * in_channels
        for out in channels:
            layers += [nn.Linear(width, out), nn.LeakyReLU(0.2)]
            width = out
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Tensor, graph: Tensor) -> Tensor:
        """``features (B, N, C)``, ``graph (B, N, k)`` -> ``(B, N, channels[-1])``."""
        neighbours = gather_neighbours(features, graph)
        centre = features.unsqueeze(2)
        relative = neighbours - centre
        edges = relative if self.relative_only else torch.cat([centre.expand_as(neighbours), relative], dim=-1)
        return self.mlp(edges).amax(dim=2)


class GraphFeatureNet(nn.Module):
    """Per-point features ``(B, N, out_channels)`` of a cloud ``(B, N, 3)`` in mm.

    ``k``: neighbours of the kNN graph; ``channels``: output widths of the edge convolutions (each a
    two-layer MLP); ``length_scale``: mm that relative positions are divided by; the outputs of all
    edge convolutions are concatenated and mapped point-wise to ``out_channels``.
    """

    def __init__(self, k: int = 10, channels: Sequence[int] = (32, 32, 64), out_channels: int = 16,
                 length_scale: float = 10.0) -> None:
        super().__init__()
        if k < 1 or not channels or out_channels < 1 or length_scale <= 0:
            raise RegframeInputError(f"GraphFeatureNet: need k >= 1, channels, out_channels >= 1 and length_scale > 0; "
                                     f"got k={k}, channels={list(channels)}, out_channels={out_channels}, "
                                     f"length_scale={length_scale}")
        self.k = k
        self.length_scale = length_scale
        convs = []
        width = 3
        for index, out in enumerate(channels):
            convs.append(EdgeConv(width, (out, out), relative_only=index == 0))
            width = out
        self.convs = nn.ModuleList(convs)
        self.head = nn.Sequential(nn.Linear(sum(channels), 64), nn.LeakyReLU(0.2),
                                  nn.Linear(64, out_channels))

    def forward(self, points: Tensor) -> Tensor:
        """``points (B, N, 3)`` mm -> features ``(B, N, out_channels)``."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise RegframeInputError(f"GraphFeatureNet expects points (B, N, 3) in mm, got {tuple(points.shape)}")
        graph = knn_graph(points, self.k)
        features = points / self.length_scale
        outputs = []
        for conv in self.convs:
            features = conv(features, graph)
            outputs.append(features)
        return self.head(torch.cat(outputs, dim=-1))
