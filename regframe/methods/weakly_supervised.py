"""Weakly supervised VoxelMorph-style registration (Balakrishnan et al., IEEE TMI 2019, auxiliary
segmentation): any ``DisplacementEstimator`` trained by

    similarity(F, M∘(id+u)) + dice_weight · (1 − softDice(onehot(L_M)∘(id+u), onehot(L_F)))
                            + smooth_weight · diffusion(u)

on every pair (``u`` in voxels). The Dice term uses the linearly warped one-hot moving label and is
added only when the batch holds both labels; unlabelled batches train on the image terms alone.
It is the label-supervised control for JRSS (``experiments/prostate_weakly_supervised.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.losses import diffusion, local_ncc, mse, soft_dice
from regframe.methods.base import RegistrationModule
from regframe.spatial import warp


class WeaklySupervised(RegistrationModule):
    """Image similarity (``"mse"`` or negative local NCC with window ``ncc_kernel``) + label Dice
    (``num_classes`` including background, which the Dice ignores) + diffusion regularisation."""

    def __init__(self, estimator: DisplacementEstimator, num_classes: int,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: LRSchedulerCallable | None = None,
                 similarity: Literal["mse", "ncc"] = "mse", ncc_kernel: int = 9, dice_weight: float = 1.0,
                 smooth_weight: float = 0.01, label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        if similarity not in ("mse", "ncc"):
            raise RegframeInputError(f"model.init_args.similarity must be 'mse' or 'ncc', got {similarity!r}")
        super().__init__(estimator, optimizer, lr_scheduler, label_warp, compute_hd95)
        self.num_classes, self.similarity, self.ncc_kernel = num_classes, similarity, ncc_kernel
        self.dice_weight, self.smooth_weight = dice_weight, smooth_weight

    def onehot(self, label: Tensor) -> Tensor:
        """Integer labels ``(B, 1, *S)`` -> one-hot ``(B, num_classes, *S)`` float."""
        if int(label.max()) >= self.num_classes:
            raise RegframeInputError(
                f"model.init_args.num_classes={self.num_classes} but a label has id {int(label.max())}")
        return F.one_hot(label[:, 0].long(), self.num_classes).movedim(-1, 1).float()

    def loss_terms(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The weighted ``loss`` and its unweighted terms ``similarity``, ``diffusion`` (and ``dice``)."""
        fixed, moving = batch["fixed"], batch["moving"]
        disp = self.estimator(fixed, moving)
        warped = warp(moving, disp)
        similarity = mse(fixed, warped) if self.similarity == "mse" else local_ncc(fixed, warped, self.ncc_kernel)
        terms = {"similarity": similarity, "diffusion": diffusion(disp)}
        terms["loss"] = similarity + self.smooth_weight * terms["diffusion"]
        if "fixed_label" in batch and "moving_label" in batch:
            terms["dice"] = soft_dice(warp(self.onehot(batch["moving_label"]), disp), self.onehot(batch["fixed_label"]))
            terms["loss"] = terms["loss"] + self.dice_weight * terms["dice"]
        return terms

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        terms = self.loss_terms(batch)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, prog_bar=True,
                      batch_size=batch["fixed"].shape[0])
        return terms["loss"]
