"""Supervision by the keypoint correspondences of the training pairs (the CST paper's "landmark
supervision" row of Table 3, with the Learn2Reg keypoint pairs as the annotations): the upper bound
of what the point estimator learns from the same training pairs with perfect labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.methods.cyclical_points import augmented_labels
from regframe.methods.points_base import PointRegistrationModule
from regframe.point_clouds import voxel_to_mm


class PointKeypointSupervised(PointRegistrationModule):
    """Train ``estimator`` by the mean end-point error (mm) against the true displacement of every
    served fixed point (its row of the pair's keypoint files, mapped through the augmentation, as
    CST's pseudo labels are). Needs :class:`data_modules.points.PointCloudDataModule` batches."""

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        pairs = getattr(self.trainer.datamodule, "train_pairs", None)
        if not pairs:
            raise RegframeInputError("PointKeypointSupervised needs a point-cloud datamodule with training pairs")
        index = batch["fixed_point_index"].long()
        truths = []
        for item, pair_index in enumerate(batch["pair_index"].tolist()):
            pair = pairs[pair_index]
            rows = index[item].cpu()
            truths.append(voxel_to_mm(pair.moving_keypoints[rows] - pair.fixed_keypoints[rows], pair.spacing))
        truth = torch.stack(truths).to(batch["fixed_points"])
        target = augmented_labels(truth, batch["fixed_points"], batch["fixed_affine"], batch["moving_affine"])
        displacements = self.estimator(batch["fixed_points"], batch["moving_points"])
        loss = (displacements - target).norm(dim=-1).mean()
        self.log_training_loss(loss, len(truths))
        return loss
