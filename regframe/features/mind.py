"""MIND-SSC: modality-independent self-similarity context descriptors (Heinrich et al.), 2D and 3D.

For every pair of face neighbours of the 3×3(×3) stencil that lie at squared distance 2 from each
other, the descriptor compares two patches: the image shifted by ``dilation·offset_a`` and by
``dilation·offset_b`` (replicate padding), squared difference box-filtered over ``2·radius+1``.
Per voxel the channel minimum is subtracted, the variance is the channel mean clamped to
``[0.001, 1000] ×`` its global mean, and the descriptor is ``exp(−ssd / variance)``.
3D: six neighbours, 12 pairs → 12 channels. 2D: four neighbours, 4 pairs → 4 channels.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.errors import RegframeInputError


def _neighbour_pairs(dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of face-neighbour offsets (relative to the centre) at squared distance 2."""
    faces = []
    for axis in range(dims):
        for sign in (-1, 1):
            offset = [0] * dims
            offset[axis] = sign
            faces.append(tuple(offset))
    return [(a, b) for a, b in itertools.combinations(faces, 2)
            if sum((x - y) ** 2 for x, y in zip(a, b)) == 2]


def _shifted(padded: Tensor, offset: tuple[int, ...], pad: int, shape: tuple[int, ...]) -> Tensor:
    """View of ``padded`` (padded by ``pad`` on every side) so that ``out(x) = image(x + offset)``."""
    index = [slice(None), slice(None)]
    index += [slice(pad + o, pad + o + n) for o, n in zip(offset, shape)]
    return padded[tuple(index)]


def _replicate_pad(x: Tensor, pad: int) -> Tensor:
    return F.pad(x, [pad] * (2 * (x.dim() - 2)), mode="replicate") if pad > 0 else x


def mind_ssc(image: Tensor, radius: int = 2, dilation: int = 2) -> Tensor:
    """MIND-SSC of ``image (B, 1, *S)`` (2D or 3D); returns ``(B, 12, *S)`` in 3D, ``(B, 4, *S)`` in 2D.

    ``radius`` is the half-width of the patch box filter and ``dilation`` the spacing (voxels) of
    the self-similarity stencil. Values lie in ``(0, 1]``.
    """
    if image.dim() not in (4, 5) or image.shape[1] != 1:
        raise RegframeInputError(f"mind_ssc expects a (B, 1, *S) 2D or 3D image, got shape {tuple(image.shape)}")
    if radius < 0 or dilation < 1:
        raise RegframeInputError(f"mind_ssc needs radius >= 0 and dilation >= 1, got {radius}, {dilation}")
    image = image.float()
    dims = image.dim() - 2
    shape = tuple(image.shape[2:])
    padded = _replicate_pad(image, dilation)
    ssd = torch.cat([
        (_shifted(padded, tuple(dilation * o for o in a), dilation, shape)
         - _shifted(padded, tuple(dilation * o for o in b), dilation, shape)) ** 2
        for a, b in _neighbour_pairs(dims)
    ], dim=1)
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    ssd = pool(_replicate_pad(ssd, radius), 2 * radius + 1, stride=1)
    ssd = ssd - ssd.min(dim=1, keepdim=True).values
    variance = ssd.mean(dim=1, keepdim=True)
    global_mean = variance.mean().item()
    variance = variance.clamp(global_mean * 0.001, global_mean * 1000).clamp_min(1e-12)
    return torch.exp(-ssd / variance)


class MINDSSC(nn.Module):
    """MIND-SSC as a feature extractor ``(B, 1, *S) -> (B, 12 or 4, *S)``; no weights.

    Defaults ``radius=1, dilation=2`` are ConvexAdam's.
    """

    def __init__(self, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        self.radius = radius
        self.dilation = dilation

    def forward(self, image: Tensor) -> Tensor:
        return mind_ssc(image, self.radius, self.dilation)
