"""Metric-supervised baselines for CST: the same ``h∘g`` estimator trained with an image similarity
(MIND-SSC or local NCC) plus diffusion regularisation instead of pseudo labels (CST paper, Table 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.protocols import field_at, trained_network
from regframe.losses import diffusion, local_ncc, mse
from regframe.methods.base import RegistrationModule
from regframe.spatial import resize_image, warp

SIMILARITIES = ("mind", "ncc")


class MetricSupervised(RegistrationModule):
    """Train the network inside ``estimator`` (:func:`~regframe.estimators.protocols.trained_network`)
    by ``similarity(F, M∘(id+u)) + smooth_weight * diffusion(u)``.

    The loss is computed on the image grid resampled by ``loss_resample_factor`` (0.5 = half
    resolution, like CST's pseudo-label loss).
    ``similarity``: ``"mind"`` = mean squared difference of MIND-SSC descriptors
    (``mind_radius``, ``mind_dilation``; :func:`regframe.features.mind.mind_ssc`) or ``"ncc"`` =
    negative local NCC (window ``ncc_kernel``). Validation/test use the whole ``estimator`` with its
    wrappers (give the bare network as ``estimator`` to evaluate it alone). Default estimator: CST's
    ``Refined(TwoStep(InverseConsistent(h∘g)))``.
    ``smooth_weight`` is not given by the paper; the default is a sensible value, not a tuned one.
    """

    def __init__(self, estimator: DisplacementEstimator | None = None, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: LRSchedulerCallable | None = None, similarity: str = "mind",
                 smooth_weight: float = 1.0, loss_resample_factor: float = 0.5, mind_radius: int = 2, mind_dilation: int = 2,
                 ncc_kernel: int = 9, label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        if similarity not in SIMILARITIES:
            raise RegframeInputError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        estimator = estimator if estimator is not None else cst_pipeline()
        super().__init__(estimator, optimizer, lr_scheduler, label_warp, compute_hd95)
        self.similarity = similarity
        self.smooth_weight = smooth_weight
        self.loss_resample_factor = loss_resample_factor
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
        size = tuple(math.floor(n * self.loss_resample_factor) for n in fixed.shape[2:])
        disp = field_at(trained_network(self.estimator), fixed, moving, size)
        fixed_small, moving_small = resize_image(fixed, size), resize_image(moving, size)
        similarity = self.similarity_loss(fixed_small, warp(moving_small, disp))
        smooth = diffusion(disp)
        loss = similarity + self.smooth_weight * smooth
        self.log_dict({"train/similarity": similarity, "train/diffusion": smooth, "train/loss": loss},
                      prog_bar=True, batch_size=fixed.shape[0])
        return loss
