"""Registration loss with optional label supervision: MSE + smooth_weight·diffusion + dice_weight·soft Dice
of warped moving labels against fixed labels (JRSS's ψ_r, the Mono-Reg baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
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

    ``w = smooth_weight_warmup`` for the first ``warmup_steps`` registration optimiser steps,
    ``smooth_weight`` after. The Dice term compares the warped moving labels with the fixed labels only
    on the voxels that have a target in both images: valid in the fixed image and, after warping the
    moving image's validity map with ``u``, above ½ there (this mask carries no gradient). Screened
    pseudo-label voxels and images without any label are thus left out; pairs without such voxels add
    nothing (they train unsupervised, the paper's ``L_d = 0``).
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
                fixed_valid: Tensor, moving_valid: Tensor, step: int) -> RegistrationLossTerms:
        """
        Args:
            fixed, moving: images ``(B, 1, *S)``; disp: displacement ``(B, D, *S)`` in voxels.
            fixed_target, moving_target: one-hot labels ``(B, K, *S)`` (zeros where there is none).
            fixed_valid, moving_valid: ``(B, 1, *S)`` float, 1 where the image has a target, 0 elsewhere.
            step: registration optimiser steps taken so far (for the warm-up).
        """
        smooth_weight = self.smooth_weight_at(step)
        image_loss = mse(warp(moving, disp), fixed)
        smooth = diffusion(disp)
        loss = image_loss + smooth_weight * smooth
        with torch.no_grad():
            mask = fixed_valid * (warp(moving_valid, disp) > 0.5).to(fixed_valid.dtype)
        usable = mask.flatten(1).any(dim=1)
        dice = loss * 0.0
        if usable.any():
            warped_labels = warp(moving_target, disp) * mask
            dice = soft_dice(warped_labels[usable], (fixed_target * mask)[usable])
            loss = loss + self.dice_weight * dice * usable.float().mean()
        return RegistrationLossTerms(loss, image_loss, smooth, dice, smooth_weight)
