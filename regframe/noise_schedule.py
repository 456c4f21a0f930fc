"""The forward (noising) process of a denoising diffusion model (Ho et al., NeurIPS 2020) with a
linear variance schedule: ``β_t`` from ``beta_start`` to ``beta_end`` over ``timesteps`` steps,
``ᾱ_t = Π_{s≤t} (1 − β_s)`` and ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)``. Steps are 0-based:
``t = 0`` is the first noising step (``ᾱ_0 = 1 − β_0``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearNoiseSchedule(nn.Module):
    """Buffers ``betas`` and ``alpha_bars`` ``(timesteps,)`` (float64 computed, stored float32).

    Args:
        timesteps: number of diffusion steps ``T``.
        beta_start, beta_end: first and last variance ``β`` (DDPM: 1e-4 and 0.02 over 1000 steps).
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if timesteps < 1 or not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need timesteps >= 1 and 0 < beta_start <= beta_end < 1, got {timesteps}, "
                             f"{beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        self.timesteps = timesteps
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(1.0 - betas, 0).float(), persistent=False)

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``√ᾱ_t x_0`` and variance ``(1 − ᾱ_t)`` (broadcastable) of ``q(x_t | x_0)`` for ``x0``
        ``(B, C, *S)`` and integer steps ``t`` ``(B,)``."""
        alpha_bar = self.alpha_bars[t].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        return alpha_bar.sqrt() * x0, 1.0 - alpha_bar

    def sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` for standard normal ``noise`` shaped like ``x0``."""
        mean, variance = self.marginal(x0, t)
        return mean + variance.sqrt() * noise
