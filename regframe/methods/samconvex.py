"""SAMConvex (Li et al., MICCAI 2023): self-supervised anatomical embedding + correlation pyramid.

Two LightningModules:

- :class:`AnatomicalEmbeddingPretraining` trains the SAM-style embedding without labels: every
  scan of a training batch (``fixed`` and ``moving`` alike) gives two augmented, overlapping crops;
  a pixel-wise InfoNCE loss (temperature 0.5, hard negatives) pulls together the embeddings of the
  same physical point, for the local (fine) and the global (coarse) head.
- :class:`SAMConvex` is a ``RegistrationModule`` whose estimator comes from the config: the
  training-free :class:`~regframe.estimators.pyramid.CorrelationPyramidEstimator` on that embedding
  (:class:`~regframe.features.embedding.PretrainedEmbedding`; cost = negative dot product). It has
  nothing to train: ``fit`` only validates; ``validate`` runs the full registration and logs the
  usual metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from regframe.checkpoint import record_preprocessing
from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.pyramid import CONVEX_SCHEDULE, CorrelationPyramidEstimator
from regframe.features.embedding import AnatomicalEmbedding
from regframe.losses_contrastive import pixel_infonce
from regframe.methods.base import RegistrationModule, stop_on_nonfinite_loss


class AnatomicalEmbeddingPretraining(pl.LightningModule):
    """Self-supervised training of :class:`AnatomicalEmbedding` on unlabelled scans.

    Args:
        widths, fpn_width, local_dim, global_dim: the embedding network (see ``AnatomicalEmbedding``).
        crop_size: crop side lengths (voxels); clipped to the scan. Crop offsets between the two
            views are multiples of the global head's stride so both heads have exact correspondences.
        num_points, num_negatives: anchors per crop pair and hardest negatives kept per anchor.
        temperature: InfoNCE temperature (SAM 0.5).
        global_weight: weight of the global-head loss.
        intensity_jitter: each view's intensities are scaled by ``1 ± jitter`` and shifted by ``± jitter``.
        noise_std: Gaussian noise added to each view.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48), fpn_width: int = 32, local_dim: int = 16,
                 global_dim: int = 16, crop_size: Sequence[int] = (48, 48, 48), num_points: int = 128,
                 num_negatives: int = 64, temperature: float = 0.5, global_weight: float = 1.0,
                 intensity_jitter: float = 0.1, noise_std: float = 0.02,
                 optimizer: OptimizerCallable = torch.optim.Adam) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.embedding = AnatomicalEmbedding(widths, fpn_width, local_dim, global_dim)
        self.global_stride = 2 ** len(widths)
        self.optimizer_factory = optimizer

    def _views(self, image: Tensor) -> tuple[Tensor, Tensor, list[int]]:
        """Two augmented overlapping crops of ``image (1, *S)`` and the crop-B start minus crop-A start."""
        shape = image.shape[1:]
        size = [min(int(c), int(n)) // self.global_stride * self.global_stride for c, n in zip(self.hparams.crop_size, shape)]
        if min(size) == 0:
            raise RegframeInputError(f"scan of shape {tuple(shape)} is smaller than one global-head cell "
                                     f"({self.global_stride} voxels)")
        start_a, start_b = [], []
        for n, c in zip(shape, size):
            a = int(torch.randint(0, n - c + 1, (1,)))
            cells = (c // 2) // self.global_stride
            b = a + self.global_stride * int(torch.randint(-cells, cells + 1, (1,)))
            while b < 0 or b > n - c:  # keep the shifted crop inside the scan
                b += self.global_stride if b < 0 else -self.global_stride
            start_a.append(a)
            start_b.append(b)
        crops = [image[(slice(None),) + tuple(slice(s, s + c) for s, c in zip(start, size))]
                 for start in (start_a, start_b)]
        views = [self._augment(crop) for crop in crops]
        return views[0], views[1], [b - a for a, b in zip(start_a, start_b)]

    def _augment(self, crop: Tensor) -> Tensor:
        jitter = self.hparams.intensity_jitter
        scale = 1 + jitter * (2 * torch.rand((), device=crop.device) - 1)
        shift = jitter * (2 * torch.rand((), device=crop.device) - 1)
        return crop * scale + shift + self.hparams.noise_std * torch.randn_like(crop)

    def contrastive_loss(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Local and global InfoNCE for one scan ``(1, *S)``."""
        view_a, view_b, start_shift = self._views(image)
        local, coarse = self.embedding.embed(torch.stack([view_a, view_b]))
        hp = self.hparams
        # a voxel p of crop A is voxel p - start_shift of crop B
        local_loss = pixel_infonce(local[0], local[1], [-s // 2 for s in start_shift], hp.num_points,
                                   hp.num_negatives, exclusion_radius=2.0, temperature=hp.temperature)
        global_loss = pixel_infonce(coarse[0], coarse[1], [-s // self.global_stride for s in start_shift],
                                    hp.num_points, hp.num_negatives, exclusion_radius=1.0, temperature=hp.temperature)
        return local_loss, global_loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        scans = torch.cat([batch["fixed"], batch["moving"]])
        losses = [self.contrastive_loss(scan) for scan in scans]
        local = torch.stack([l for l, _ in losses]).mean()
        coarse = torch.stack([g for _, g in losses]).mean()
        loss = local + self.hparams.global_weight * coarse
        self.log_dict({"train/loss": loss, "train/infonce_local": local, "train/infonce_global": coarse},
                      prog_bar=True, batch_size=scans.shape[0])
        return loss

    def on_before_backward(self, loss: Tensor) -> None:
        stop_on_nonfinite_loss(self, loss)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_preprocessing(self, checkpoint)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.embedding.parameters())


def samconvex_pyramid(features: nn.Module, image_resample_factor: float = 1.0, levels: Sequence[int] = (4, 2, 1),
                      radii: Sequence[int] = (2, 3, 3), smooth_iters: int = 3) -> CorrelationPyramidEstimator:
    """The SAMConvex estimator: the pyramid on ``features`` (e.g. :class:`~regframe.features.embedding.PretrainedEmbedding`) with
    the negative dot product, the features' own grid, schedule {0.003..1} and three box filters per
    round. Wrap it in :class:`~regframe.estimators.refine.Refined` with ``similarity: neg_cos`` for
    cosine-similarity Adam IO."""
    return CorrelationPyramidEstimator(features=features, image_resample_factor=image_resample_factor, grid_spacing=1,
                                       levels=levels, radii=radii, metric="neg_dot", smooth_iters=smooth_iters,
                                       schedule=CONVEX_SCHEDULE)


class SAMConvex(RegistrationModule):
    """SAMConvex as a ``RegistrationModule``: registration by ``estimator`` (in the configs the
    correlation pyramid on a :class:`~regframe.features.embedding.PretrainedEmbedding`, see
    :func:`samconvex_pyramid`). Nothing is trained; images arrive from the data module already
    preprocessed as in pre-training.
    """

    def __init__(self, estimator: DisplacementEstimator, label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        super().__init__(estimator=estimator, label_warp=label_warp, compute_hd95=compute_hd95)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Nothing to train: the registration is an optimisation per pair."""
        return None

    def configure_optimizers(self) -> None:
        return None
