"""DiffuseMorph (Kim, Han and Ye, MICCAI 2022): registration driven by the features of a
conditional denoising diffusion network.

A time-conditioned U-Net ``G`` sees ``concat(x_t, moving, fixed)`` and the step ``t``; its last
feature map feeds two heads: the noise prediction ``ε̂`` (the diffusion network's output) and the
registration head, which maps ``concat(features, moving)`` to the displacement. Training adds
:meth:`DiffuseMorph.auxiliary_loss`, the DDPM noise-prediction loss ``‖ε̂(x_t, t | moving, fixed) −
ε‖²`` on the fixed image (``x_t ~ q(x_t | fixed)``, linear schedule), to the registration loss; at
inference (:meth:`forward`) ``x_t`` is the fixed image itself at ``t = 0``, as in the paper.

Deviations, on purpose: the registration loss is computed at ``t = 0`` (the inference input)
rather than on the noisy ``x_t`` of the same pass, so the diffusion loss costs a second pass of
``G``; the network is a small VoxelMorph-width U-Net (not the paper's DDPM U-Net with attention),
and ``diffusion_weight`` = 0.05 reproduces the paper's 1 : 20 ratio of the diffusion to the
registration loss. Any number of spatial axes the convolutions support (2D, 3D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.estimators.base import DisplacementEstimator
from regframe.noise_schedule import LinearNoiseSchedule


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style embedding ``(B, dim)`` of integer steps ``t`` ``(B,)``: ``[sin(t ω_k), cos(t ω_k)]``
    with ``ω_k = 10000^(−k / (dim/2))``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _conv(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


class TimeConditionedBlock(nn.Module):
    """Two 3x3 convolutions with LeakyReLU; the step embedding, projected to the channels, is added
    after the first."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        conv = _conv(spatial_dims)
        self.first = conv(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(embedding_dim, out_channels)
        self.second = conv(out_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        bias = self.time(embedding).view(*embedding.shape[:1], -1, *[1] * (x.dim() - 2))
        return self.act(self.second(self.act(self.first(x) + bias)))


class ConditionalDenoisingUNet(nn.Module):
    """``G(x_t, t | moving, fixed)``: features ``(B, features[0], *S)`` of ``concat(x_t, moving, fixed)``
    (``*S`` divisible by ``2^(len(features) − 1)``), max-pool down, nearest-neighbour up, skip connections."""

    def __init__(self, spatial_dims: int, features: Sequence[int], embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.time_mlp = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        channels = [3, *features]
        self.down = nn.ModuleList(TimeConditionedBlock(spatial_dims, channels[i], channels[i + 1], embedding_dim)
                                  for i in range(len(features)))
        self.up = nn.ModuleList(TimeConditionedBlock(spatial_dims, features[i + 1] + features[i], features[i],
                                                     embedding_dim)
                                for i in reversed(range(len(features) - 1)))
        self.pool = {2: F.max_pool2d, 3: F.max_pool3d}[spatial_dims]

    def forward(self, x_t: Tensor, t: Tensor, moving: Tensor, fixed: Tensor) -> Tensor:
        embedding = self.time_mlp(sinusoidal_embedding(t, self.embedding_dim))
        x = torch.cat([x_t, moving, fixed], dim=1)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x, 2), embedding)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[2:], mode="nearest"), skip], dim=1), embedding)
        return x


class DiffuseMorph(DisplacementEstimator):
    """Displacement from the denoising network's features at ``x_t = fixed``, ``t = 0``.

    Args:
        spatial_dims: 2 or 3.
        features: channels per U-Net level (the first is the feature map the heads read).
        embedding_dim: width of the step embedding.
        timesteps, beta_start, beta_end: the linear noise schedule (:class:`LinearNoiseSchedule`).
        diffusion_weight: factor on the noise-prediction loss in :meth:`auxiliary_loss`.
        init_std: standard deviation of the registration head's last convolution (zero bias), so
            training starts near the identity.
    """

    def __init__(self, spatial_dims: int = 3, features: Sequence[int] = (16, 32, 32, 32), embedding_dim: int = 32,
                 timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 diffusion_weight: float = 0.05, init_std: float = 1e-5) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = _conv(spatial_dims)
        self.spatial_dims = spatial_dims
        self.size_divisible = 2 ** (len(features) - 1)
        self.denoiser = ConditionalDenoisingUNet(spatial_dims, features, embedding_dim)
        self.noise_head = conv(features[0], 1, 3, padding=1)
        self.registration_head = nn.Sequential(conv(features[0] + 1, features[0], 3, padding=1), nn.LeakyReLU(0.2),
                                               conv(features[0], spatial_dims, 3, padding=1))
        self.schedule = LinearNoiseSchedule(timesteps, beta_start, beta_end)
        self.diffusion_weight = diffusion_weight
        nn.init.normal_(self.registration_head[-1].weight, std=init_std)
        nn.init.zeros_(self.registration_head[-1].bias)

    def _padded(self, *images: Tensor) -> list[Tensor]:
        pad = []
        for n in reversed(images[0].shape[2:]):  # F.pad lists the last axis first
            pad += [0, math.ceil(n / self.size_divisible) * self.size_divisible - n]
        return [F.pad(image, pad) for image in images]

    def _check(self, fixed: Tensor, moving: Tensor) -> None:
        if fixed.shape != moving.shape or fixed.dim() != self.spatial_dims + 2 or fixed.shape[1] != 1:
            raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must both be "
                             f"(B, 1, *S) with {self.spatial_dims} spatial axes")

    def predict_noise(self, x_t: Tensor, t: Tensor, fixed: Tensor, moving: Tensor) -> Tensor:
        """``ε̂(x_t, t | moving, fixed)`` ``(B, 1, *S)``."""
        shape = fixed.shape[2:]
        x_t, fixed, moving = self._padded(x_t, fixed, moving)
        noise = self.noise_head(self.denoiser(x_t, t, moving, fixed))
        return noise[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """Displacement ``(B, D, *S)`` in voxels (backward map on the fixed grid), from ``G(fixed, 0 | moving, fixed)``."""
        self._check(fixed, moving)
        shape = fixed.shape[2:]
        fixed_p, moving_p = self._padded(fixed, moving)
        t = torch.zeros(fixed.shape[0], dtype=torch.long, device=fixed.device)
        features = self.denoiser(fixed_p, t, moving_p, fixed_p)
        field = self.registration_head(torch.cat([features, moving_p], dim=1))
        return field[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]

    def diffusion_loss(self, fixed: Tensor, moving: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``mean ‖ε̂(x_t, t | moving, fixed) − ε‖²`` for ``x_t = √ᾱ_t fixed + √(1 − ᾱ_t) ε`` (``noise`` = ε)."""
        x_t = self.schedule.sample(fixed, t, noise)
        return (self.predict_noise(x_t, t, fixed, moving) - noise).pow(2).mean()

    def auxiliary_loss(self, fixed: Tensor, moving: Tensor) -> Tensor:
        """``diffusion_weight`` x the noise-prediction loss at uniformly drawn steps and standard
        normal noise (the training signal of the denoiser, added to the registration loss)."""
        self._check(fixed, moving)
        t = torch.randint(0, self.schedule.timesteps, (fixed.shape[0],), device=fixed.device)
        return self.diffusion_weight * self.diffusion_loss(fixed, moving, t, torch.randn_like(fixed))
