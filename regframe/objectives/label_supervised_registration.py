"""Registration loss with optional label supervision: MSE + smooth_weight·diffusion + dice_weight·soft Dice
of warped moving labels against fixed labels (JRSS's ψ_r, the Mono-Reg baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from regframe.losses import diffusion, mse, soft_dice
from regframe.spatial import warp


@dataclass
class RegistrationLossTerms:
    """The registration loss and its parts (scalars); ``smooth_weight`` is the weight used."""

    loss: Tensor
    mse: Tensor
    diffusion: Tensor
    dice: Tensor
    smooth_weight: float


class LabelSupervisedRegistrationLoss(nn.Module):
    """``MSE(warp(moving, u), fixed) + w·diffusion(u) + dice_weight·Dice·(share of usable pairs)``.

    ``w = smooth_weight_warmup`` for the first ``warmup_steps`` optimiser steps, ``smooth_weight`` after.
    The Dice term uses, per pair, only the classes labelled in both images (``kept``); pairs with no
    foreground class in common add nothing (they train unsupervised).
    """

    def __init__(self, smooth_weight: float = 0.025, smooth_weight_warmup: float = 0.1, warmup_steps: int = 300,
                 dice_weight: float = 0.1) -> None:
        super().__init__()
        self.smooth_weight = smooth_weight
        self.smooth_weight_warmup = smooth_weight_warmup
        self.warmup_steps = warmup_steps
        self.dice_weight = dice_weight

    def smooth_weight_at(self, step: int) -> float:
        """The diffusion weight at registration optimiser step ``step`` (0-based)."""
        return self.smooth_weight_warmup if step < self.warmup_steps else self.smooth_weight

    def forward(self, fixed: Tensor, moving: Tensor, disp: Tensor, fixed_target: Tensor, moving_target: Tensor,
                kept: Tensor, step: int) -> RegistrationLossTerms:
        """
        Args:
            fixed, moving: images ``(B, 1, *S)``; disp: displacement ``(B, D, *S)`` in voxels.
            fixed_target, moving_target: one-hot labels ``(B, K, *S)`` (zeros where there is none).
            kept: ``(B, K)`` bool, the classes labelled in both images of each pair.
            step: registration optimiser steps taken so far (for the warm-up).
        """
        smooth_weight = self.smooth_weight_at(step)
        image_loss = mse(warp(moving, disp), fixed)
        smooth = diffusion(disp)
        loss = image_loss + smooth_weight * smooth
        usable = kept[:, 1:].any(dim=1)
        dice = loss * 0.0
        if usable.any():
            mask = kept.float().view(*kept.shape, *([1] * (fixed.dim() - 2)))
            warped_labels = warp(moving_target * mask, disp)
            dice = soft_dice(warped_labels[usable], (fixed_target * mask)[usable])
            loss = loss + self.dice_weight * dice * usable.float().mean()
        return RegistrationLossTerms(loss, image_loss, smooth, dice, smooth_weight)
