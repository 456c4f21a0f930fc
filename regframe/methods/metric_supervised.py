"""Metric-supervised baselines for CST: the same ``h∘g`` estimator trained with an image similarity
(MIND-SSC or local NCC) plus diffusion regularisation instead of pseudo labels (CST paper, Table 2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.refine import RefinedEstimator
from regframe.losses import diffusion, local_ncc, mse
from regframe.methods.base import RegistrationModule
from regframe.spatial import resize_image, warp

SIMILARITIES = ("mind", "ncc")


class MetricSupervised(RegistrationModule):
    """Train ``estimator.base`` by ``similarity(F, M∘(id+u)) + smooth_weight * diffusion(u)``.

    The loss is computed at ``1/loss_downsample`` resolution (like CST's pseudo-label loss).
    ``similarity``: ``"mind"`` = mean squared difference of MIND-SSC descriptors
    (``mind_radius``, ``mind_dilation``; :func:`regframe.features.mind.mind_ssc`) or ``"ncc"`` =
    negative local NCC (window ``ncc_kernel``). Validation/test use ``estimator`` with its refinement
    settings (set ``warps: 1, adam_iterations: 0`` in the config for the bare network).
    ``smooth_weight`` is not given by the paper; the default is a sensible value, not a tuned one.
    """

    def __init__(self, estimator: RefinedEstimator | None = None, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: LRSchedulerCallable | None = None, similarity: str = "mind",
                 smooth_weight: float = 1.0, loss_downsample: int = 2, mind_radius: int = 2, mind_dilation: int = 2,
                 ncc_kernel: int = 9, label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        if similarity not in SIMILARITIES:
            raise RegframeInputError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        super().__init__(estimator if estimator is not None else RefinedEstimator(), optimizer, lr_scheduler,
                         label_warp, compute_hd95)
        self.similarity = similarity
        self.smooth_weight = smooth_weight
        self.loss_downsample = loss_downsample
        self.mind_radius = mind_radius
        self.mind_dilation = mind_dilation
        self.ncc_kernel = ncc_kernel

    def similarity_loss(self, fixed: Tensor, warped: Tensor) -> Tensor:
        if self.similarity == "ncc":
            return local_ncc(fixed, warped, self.ncc_kernel)
        from regframe.features.mind import mind_ssc

        return mse(mind_ssc(fixed, self.mind_radius, self.mind_dilation),
                   mind_ssc(warped, self.mind_radius, self.mind_dilation))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        fixed, moving = batch["fixed"], batch["moving"]
        size = tuple(n // self.loss_downsample for n in fixed.shape[2:])
        disp = self.estimator.base(fixed, moving, output_size=size)
        fixed_small, moving_small = resize_image(fixed, size), resize_image(moving, size)
        similarity = self.similarity_loss(fixed_small, warp(moving_small, disp))
        smooth = diffusion(disp)
        loss = similarity + self.smooth_weight * smooth
        self.log_dict({"train/similarity": similarity, "train/diffusion": smooth, "train/loss": loss},
                      prog_bar=True, batch_size=fixed.shape[0])
        return loss
