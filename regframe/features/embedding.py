"""Self-supervised anatomical embedding (SAM-style, Yan et al. 2022) as a 3D feature extractor.

A small ResNet-style encoder (stride-2 stem, then one residual stage per further halving) with a
feature pyramid (FPN) decoder. Two heads, each L2-normalised over channels:

- local head: fine embedding at half the input resolution (distinguishes neighbouring structures);
- global head: coarse embedding at the deepest level (body-part context, large capture range).

``forward`` returns the concatenation ``[local, upsampled global]`` at half resolution, so the
module is a drop-in ``(B, 1, *S) -> (B, C, *S/2)`` feature extractor for the correlation pyramid.
Widths default to CPU-sized values; the paper's model is ResNet-18 with 128 + 128 channels.
:class:`PretrainedEmbedding` loads a trained one from an ``AnatomicalEmbeddingPretraining`` checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.checkpoint import read_checkpoint, recorded_preprocessing
from regframe.errors import RegframeInputError
from regframe.preprocess import Preprocessing

NORMS = ("group", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm (up to 8 groups; a point's features do not depend on the crop's statistics the way
    they do with instance norm) or InstanceNorm, with affine parameters."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.InstanceNorm3d(channels, affine=True)


class _ResidualBlock(nn.Module):
    """Two 3×3×3 convs with normalisation (:func:`_norm`) and a projected shortcut; ``stride`` 1 or 2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            _norm(norm, out_ch),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch),
        )
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch else
                         nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(norm, out_ch)))
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class AnatomicalEmbedding(nn.Module):
    """SAM-style embedding network for 3D scans.

    Args:
        widths: encoder channels per level; level ``k`` has stride ``2**(k+1)`` (so the default
            four levels reach 1/16).
        fpn_width: channels of the FPN decoder.
        local_dim / global_dim: embedding sizes of the fine and coarse heads.
        norm: ``"group"`` (default) or ``"instance"`` (checkpoints made before the option).
    Input ``(B, 1, *S)`` with every side divisible by ``2**len(widths)`` for exact shapes (other
    sizes work; the decoder resizes to the skip connections).
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48), fpn_width: int = 32,
                 local_dim: int = 16, global_dim: int = 16, norm: str = "group") -> None:
        super().__init__()
        if norm not in NORMS:
            raise RegframeInputError(f"norm must be one of {NORMS}, got {norm!r}")
        widths = list(widths)
        self.stem = nn.Sequential(nn.Conv3d(1, widths[0], 3, stride=2, padding=1, bias=False),
                                  _norm(norm, widths[0]), nn.LeakyReLU(0.1, inplace=True),
                                  _ResidualBlock(widths[0], widths[0], 1, norm))
        self.stages = nn.ModuleList(_ResidualBlock(a, b, 2, norm) for a, b in zip(widths[:-1], widths[1:]))
        self.lateral = nn.ModuleList(nn.Conv3d(w, fpn_width, 1) for w in widths)
        self.smooth = nn.Conv3d(fpn_width, fpn_width, 3, padding=1)
        self.local_head = nn.Sequential(nn.LeakyReLU(0.1), nn.Conv3d(fpn_width, local_dim, 1))
        self.global_head = nn.Sequential(nn.Conv3d(widths[-1], widths[-1], 3, padding=1), nn.LeakyReLU(0.1),
                                         nn.Conv3d(widths[-1], global_dim, 1))
        self.out_channels = local_dim + global_dim

    def embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(local, global)``: unit-length embeddings at 1/2 and ``1/2**len(widths)`` resolution."""
        levels = [self.stem(image)]
        for stage in self.stages:
            levels.append(stage(levels[-1]))
        top = self.lateral[-1](levels[-1])
        for lateral, skip in zip(reversed(self.lateral[:-1]), reversed(levels[:-1])):
            top = lateral(skip) + F.interpolate(top, size=skip.shape[2:], mode="trilinear", align_corners=False)
        local = F.normalize(self.local_head(self.smooth(top)), dim=1)
        coarse = F.normalize(self.global_head(levels[-1]), dim=1)
        return local, coarse

    def forward(self, image: Tensor) -> Tensor:
        """Concatenated ``[local, global]`` embedding at half resolution, ``(B, local+global, *S/2)``.

        Each part has unit length, so the dot product of two such vectors lies in ``[-2, 2]``.
        """
        local, coarse = self.embed(image)
        coarse = F.normalize(F.interpolate(coarse, size=local.shape[2:], mode="trilinear", align_corners=False), dim=1)
        return torch.cat([local, coarse], dim=1)


def load_embedding(checkpoint: str | Path) -> tuple[AnatomicalEmbedding, Preprocessing]:
    """The trained embedding (eval mode) of an ``AnatomicalEmbeddingPretraining`` checkpoint and the
    preprocessing of its pre-training data (intensity map, resampling). Loaded with ``weights_only``."""
    state = read_checkpoint(checkpoint, "AnatomicalEmbeddingPretraining")
    hp = state["hyper_parameters"]
    embedding = AnatomicalEmbedding(hp["widths"], hp["fpn_width"], hp["local_dim"], hp["global_dim"],
                                    hp.get("norm", "instance"))
    weights = {k[len("embedding."):]: v for k, v in state["state_dict"].items() if k.startswith("embedding.")}
    embedding.load_state_dict(weights)
    return embedding.eval(), recorded_preprocessing(checkpoint, state)


class PretrainedEmbedding(nn.Module):
    """A frozen :class:`AnatomicalEmbedding` read from ``checkpoint`` (an
    ``AnatomicalEmbeddingPretraining`` checkpoint): ``(B, 1, *S) -> (B, local+global, *S/2)``.

    ``preprocessing`` is what the pre-training data went through; images given to this module must
    have had the same intensity map, and the resolution its ``resample_factor`` gave.
    """

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.embedding, self.preprocessing = load_embedding(checkpoint)
        for parameter in self.embedding.parameters():
            parameter.requires_grad_(False)
        self.out_channels = self.embedding.out_channels

    def forward(self, image: Tensor) -> Tensor:
        return self.embedding(image)
