"""Segmentation training signals of JRSS: class-weighted cross-entropy with inverse-sqrt-frequency
weights, and the noisy student's loss (weighted CE + uncertainty_weight·symmetric KL to the teacher +
seg_dice_weight·soft Dice through registration)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.losses import soft_dice, symmetric_kl


def weighted_cross_entropy(logits: Tensor, target_onehot: Tensor, class_weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy of ``logits (B, K, *S)`` against ``target_onehot (B, K, *S)``,
    averaged over the voxels that have a target (one-hot sum > 0); ``class_weights (K,)``."""
    log_probs = F.log_softmax(logits, dim=1)
    weights = class_weights.view(1, -1, *([1] * (logits.dim() - 2)))
    per_voxel = -(target_onehot * weights * log_probs).sum(dim=1)
    valid = target_onehot.sum(dim=1) > 0
    return per_voxel[valid].mean() if valid.any() else logits.sum() * 0.0


def inverse_sqrt_frequency_weights(labels: Sequence[Tensor], num_classes: int) -> Tensor:
    """Class weights ``∝ frequency^-½`` over the voxels of integer ``labels`` (any shape), mean 1, ``(K,)``
    float (the paper's pixel-wise weighted CE). A class that never occurs counts as one voxel."""
    counts = sum(torch.bincount(label.flatten().long(), minlength=num_classes)[:num_classes].double()
                 for label in labels)
    weights = (counts.clamp_min(1) / counts.sum()).pow(-0.5)
    return (weights / weights.mean()).float()


@dataclass
class StudentLossTerms:
    """The student loss and its parts (scalars)."""

    loss: Tensor
    ce_labelled: Tensor
    ce_pseudo: Tensor
    sym_kl: Tensor
    registration_dice: Tensor


class StudentLoss(nn.Module):
    """``CE_w(labelled) + CE_w(pseudo) + uncertainty_weight·symKL(teacher, student)
    + seg_dice_weight·Dice through registration`` (JRSS noisy student).

    The pair images come as ``2B`` images ``[fixed_1..B; warped moving_1..B]``: image ``i`` and image
    ``i + B`` belong to the same pair and lie on the same (fixed) grid, so the segmentation of one must
    match the label of the other (the Dice through registration; one term per labelled image, fixed
    images first).
    """

    def __init__(self, uncertainty_weight: float = 0.5, seg_dice_weight: float = 1.0) -> None:
        super().__init__()
        self.uncertainty_weight = uncertainty_weight
        self.seg_dice_weight = seg_dice_weight

    def forward(self, logits: Tensor, targets: Tensor, labelled: Tensor, pseudo: Tensor, teacher_probs: Tensor,
                extra_logits: Tensor, extra_targets: Tensor, class_weights: Tensor) -> StudentLossTerms:
        """
        Args:
            logits: student logits ``(2B, K, *S)`` of the pair images.
            targets: one-hot true labels ``(2B, K, *S)`` of the pair images (rows where ``labelled``).
            labelled: ``(2B,)`` bool, which pair images have a true label.
            pseudo: screened one-hot teacher labels ``(2B, K, *S)`` (used where not ``labelled``); screened
                voxels are all-zero and add no cross-entropy.
            teacher_probs: teacher probabilities ``(2B, K, *S)`` (the symmetric KL, Eq. 5, covers every voxel
                of the unlabelled images, screened or not).
            extra_logits, extra_targets: logits and one-hot labels ``(b, K, *S)`` of further labelled images.
            class_weights: ``(K,)`` cross-entropy class weights.
        """
        pairs = logits.shape[0] // 2
        probs = logits.softmax(dim=1)
        ce_labelled = weighted_cross_entropy(torch.cat([extra_logits, logits[labelled]]),
                                             torch.cat([extra_targets, targets[labelled]]), class_weights)
        unlabelled = ~labelled
        ce_pseudo = (weighted_cross_entropy(logits[unlabelled], pseudo[unlabelled], class_weights)
                     if unlabelled.any() else ce_labelled * 0.0)
        kl = symmetric_kl(teacher_probs[unlabelled], probs[unlabelled]) if unlabelled.any() else ce_labelled * 0.0
        partner = [(i + pairs) % (2 * pairs) for i in range(2 * pairs)]
        dice_terms = [soft_dice(probs[partner[i]: partner[i] + 1], targets[i: i + 1])
                      for i in range(2 * pairs) if labelled[i]]
        registration_dice = torch.stack(dice_terms).mean() if dice_terms else ce_labelled * 0.0
        loss = ce_labelled + ce_pseudo + self.uncertainty_weight * kl + self.seg_dice_weight * registration_dice
        return StudentLossTerms(loss, ce_labelled, ce_pseudo, kl, registration_dice)
