"""SAMConvex (Li et al., MICCAI 2023): self-supervised anatomical embedding + correlation pyramid.

Two LightningModules:

- :class:`AnatomicalEmbeddingPretraining` trains the SAM-style embedding without labels: every
  scan of a training batch (``fixed`` and ``moving`` alike) gives two augmented views (scale,
  rotation, overlapping crops); InfoNCE (temperature 0.5, sampled hard + random + cross-scan
  negatives, random-negative warm-up) pulls together the embeddings of the same physical point,
  for the local (fine) and the global (coarse) head.
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
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from regframe.checkpoint import record_preprocessing
from regframe.embedding_views import View, grid_points, random_view_pair, sample_at
from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.intensity_mapped import IntensityMapped
from regframe.estimators.pyramid import CONVEX_SCHEDULE, CorrelationPyramidEstimator
from regframe.estimators.refine import Refined
from regframe.features.embedding import AnatomicalEmbedding, PretrainedEmbedding
from regframe.losses_contrastive import sample_negatives, sampled_infonce
from regframe.methods.base import RegistrationModule, stop_on_nonfinite_loss
from regframe.optim.instance import InstanceOptimisation

VIEW_DRAWS = 10  # view pairs drawn per scan and step before the scan is left out of the step


class AnatomicalEmbeddingPretraining(pl.LightningModule):
    """Self-supervised training of :class:`AnatomicalEmbedding` on unlabelled scans (SAM's recipe).

    Every scan of a batch (``fixed`` and ``moving``) gives two views (:func:`random_view_pair`:
    own scale and rotation, overlapping crops). Anchors are foreground voxels of view A; each one's
    positive is the embedding at the same physical point in view B, interpolated. Candidates are every
    embedding vector of both views and of the other scan's view A (cross-scan negatives); same-scan
    candidates within ``ignore_radius_mm`` of the anchor's point are never negatives. Negatives:
    ``num_hard`` drawn from the ``hard_pool`` candidates most similar by local + global similarity,
    plus ``num_random`` uniform ones; for the first ``hard_negative_start`` steps all are uniform
    (warm-up). The loss is InfoNCE in both directions (A->B, B->A), for the local and the global
    head. Logged collapse monitor: ``train/local_spatial_std`` (spatial std of the local embedding,
    0 when constant) and ``train/similarity_gap_local`` (positive minus mean negative similarity).

    Args:
        widths, fpn_width, local_dim, global_dim, norm: the embedding network (``AnatomicalEmbedding``).
        crop_size: view size (voxels), clipped to the scan.
        scale_range, max_degrees, max_offset: view augmentation (:func:`random_view_pair`).
        num_points: anchors per scan.
        num_hard, hard_pool, num_random, hard_negative_start: negatives (above).
        ignore_radius_mm, global_ignore_radius_mm: no same-scan negatives this close (local / global head).
        foreground_margin: anchors where the intensity exceeds the scan's minimum by this fraction of its range.
        temperature: InfoNCE temperature (SAM 0.5).
        global_weight: weight of the global-head loss.
        intensity_jitter: each view's intensities are scaled by ``1 ± jitter`` and shifted by ``± jitter``.
        noise_std: Gaussian noise added to each view.
    """

    def __init__(self, widths: Sequence[int] = (16, 24, 32, 48), fpn_width: int = 32, local_dim: int = 16,
                 global_dim: int = 16, norm: str = "group", crop_size: Sequence[int] = (48, 48, 48),
                 scale_range: tuple[float, float] = (0.8, 1.25), max_degrees: float = 10.0, max_offset: float = 0.5,
                 num_points: int = 128, num_hard: int = 32, hard_pool: int = 256, num_random: int = 64,
                 hard_negative_start: int = 100, ignore_radius_mm: float = 8.0, global_ignore_radius_mm: float = 32.0,
                 foreground_margin: float = 0.1, temperature: float = 0.5, global_weight: float = 1.0,
                 intensity_jitter: float = 0.1, noise_std: float = 0.02,
                 optimizer: OptimizerCallable = torch.optim.Adam) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.embedding = AnatomicalEmbedding(widths, fpn_width, local_dim, global_dim, norm)
        self.global_stride = 2 ** len(widths)
        self.optimizer_factory = optimizer

    def _augment(self, view: Tensor) -> Tensor:
        jitter = self.hparams.intensity_jitter
        scale = 1 + jitter * (2 * torch.rand((), device=view.device) - 1)
        shift = jitter * (2 * torch.rand((), device=view.device) - 1)
        return view * scale + shift + self.hparams.noise_std * torch.randn_like(view)

    def views(self, scan: Tensor) -> tuple[View, View]:
        """Two views of ``scan (1, *S)`` of ``crop_size`` (clipped to the scan, whole global cells)."""
        size = [max(self.global_stride, min(int(c), int(n)) // self.global_stride * self.global_stride)
                for c, n in zip(self.hparams.crop_size, scan.shape[1:])]
        hp = self.hparams
        return random_view_pair(scan, size, tuple(hp.scale_range), hp.max_degrees, hp.max_offset)

    def views_with_anchors(self, scan: Tensor) -> tuple[tuple[View, View], tuple[Tensor, Tensor]]:
        """:meth:`views` and their :meth:`anchors`, the pair redrawn (up to ``VIEW_DRAWS`` times) when no
        foreground voxel of view A lies in view B, which the random offsets and rotations occasionally
        give; the last draw, possibly without anchors, when none has any."""
        for _ in range(VIEW_DRAWS):
            views = self.views(scan)
            points = self.anchors(scan, *views)
            if points[0].shape[0] > 0:
                break
        return views, points

    def anchors(self, scan: Tensor, view_a: View, view_b: View) -> tuple[Tensor, Tensor]:
        """Up to ``num_points`` foreground voxels ``p`` of view A that lie inside view B, and their
        positions ``q`` in view B (voxel coordinates, ``(N, D)`` each)."""
        low, high = scan.min(), scan.max()
        foreground = view_a.image[0] > low + self.hparams.foreground_margin * (high - low)
        points = grid_points(view_a.image.shape[1:], scan.device)[foreground.flatten()]
        partners = view_b.from_scan(view_a.to_scan(points))
        inside = view_b.contains(partners, margin=1.0)
        points, partners = points[inside], partners[inside]
        chosen = torch.randperm(points.shape[0], device=points.device)[:self.hparams.num_points]
        return points[chosen], partners[chosen]

    def _head_loss(self, anchors: Tensor, positives: Tensor, candidates: Tensor, valid: Tensor,
                   ranking_a: Tensor, ranking_b: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        warm = self.global_step < hp.hard_negative_start
        num_hard, num_random = (0, hp.num_hard + hp.num_random) if warm else (hp.num_hard, hp.num_random)
        losses, gaps = [], []
        for a, p, ranking in ((anchors, positives, ranking_a), (positives, anchors, ranking_b)):
            negatives = sample_negatives(valid, ranking, num_hard, hp.hard_pool, num_random)
            loss, gap = sampled_infonce(a, p, candidates, negatives, hp.temperature)
            losses.append(loss)
            gaps.append(gap)
        return (losses[0] + losses[1]) / 2, (gaps[0] + gaps[1]) / 2

    def contrastive_losses(self, scans: Tensor, spacing: Tensor) -> dict[str, Tensor]:
        """Local and global losses, similarity gaps and the local spatial std for ``scans (B, 1, *S)``
        with voxel ``spacing (B, D)`` mm (B >= 1; with B >= 2 each scan's negatives include the next scan's)."""
        pairs, anchor_points = zip(*(self.views_with_anchors(scan) for scan in scans))
        images = torch.stack([self._augment(v.image) for pair in pairs for v in pair])
        local, coarse = self.embedding.embed(images)                       # (2B, C, *L), (2B, Cg, *G)
        # embedding index j sits at view voxel stride * j (each stride-2 convolution is centred on 2j)
        stride_local, stride_global = images.shape[2] // local.shape[2], self.global_stride
        grid = grid_points(local.shape[2:], scans.device)
        coarse_at_grid = [F.normalize(sample_at(c, grid * stride_local / stride_global), dim=1) for c in coarse]
        results: dict[str, list[Tensor]] = {key: [] for key in ("local", "global", "gap_local", "gap_global")}
        count = len(pairs)
        for index, (view_a, view_b) in enumerate(pairs):
            p, q = anchor_points[index]
            if p.shape[0] == 0:
                continue
            a_l, b_l = 2 * index, 2 * index + 1
            other = 2 * ((index + 1) % count) if count > 1 else None
            maps = [a_l, b_l] + ([other] if other is not None else [])
            cand_local = torch.cat([local[m].flatten(1).T for m in maps])
            cand_global = torch.cat([coarse_at_grid[m] for m in maps])
            mm = spacing[index].to(grid.dtype)
            anchor_mm = view_a.to_scan(p) * mm
            same_scan_mm = torch.cat([view.to_scan(grid * stride_local) * mm for view in (view_a, view_b)])
            distance = torch.cdist(anchor_mm, same_scan_mm)
            cross = torch.ones(p.shape[0], cand_local.shape[0] - distance.shape[1], dtype=torch.bool,
                               device=p.device)
            valid_local = torch.cat([distance > self.hparams.ignore_radius_mm, cross], dim=1)
            valid_global = torch.cat([distance > self.hparams.global_ignore_radius_mm, cross], dim=1)
            anchor_local = F.normalize(sample_at(local[a_l], p / stride_local), dim=1)
            positive_local = F.normalize(sample_at(local[b_l], q / stride_local), dim=1)
            anchor_global = F.normalize(sample_at(coarse[a_l], p / stride_global), dim=1)
            positive_global = F.normalize(sample_at(coarse[b_l], q / stride_global), dim=1)
            rank_a = anchor_local @ cand_local.T + anchor_global @ cand_global.T
            rank_b = positive_local @ cand_local.T + positive_global @ cand_global.T
            loss, gap = self._head_loss(anchor_local, positive_local, cand_local, valid_local, rank_a, rank_b)
            results["local"].append(loss)
            results["gap_local"].append(gap)
            loss, gap = self._head_loss(anchor_global, positive_global, cand_global, valid_global,
                                        anchor_global @ cand_global.T, positive_global @ cand_global.T)
            results["global"].append(loss)
            results["gap_global"].append(gap)
        if not results["local"]:
            raise RegframeInputError("no foreground anchor of any view lies in its partner view: "
                                     "lower foreground_margin or max_offset")
        out = {key: torch.stack(values).mean() for key, values in results.items()}
        out["local_spatial_std"] = local.detach().flatten(2).std(dim=2).mean()
        return out

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        scans = torch.cat([batch["fixed"], batch["moving"]])
        spacing = torch.cat([batch["spacing"], batch["spacing"]]).float()
        parts = self.contrastive_losses(scans, spacing)
        loss = parts["local"] + self.hparams.global_weight * parts["global"]
        self.log_dict({"train/loss": loss, "train/infonce_local": parts["local"], "train/infonce_global": parts["global"],
                       "train/similarity_gap_local": parts["gap_local"], "train/similarity_gap_global": parts["gap_global"],
                       "train/local_spatial_std": parts["local_spatial_std"]},
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


def samconvex_on_raw_images(features: PretrainedEmbedding, levels: Sequence[int] = (4, 2, 1),
                            radii: Sequence[int] = (2, 3, 3), io_iterations: int = 0) -> IntensityMapped:
    """:func:`samconvex_pyramid` on ``features``, the embedding of an :class:`AnatomicalEmbeddingPretraining`
    checkpoint, for raw images at their own resolution: intensities mapped and the image resampled as in
    pre-training, ``(B, 1, *S) x 2 -> (B, 3, *S)`` displacement in voxels of the input grid.
    ``io_iterations > 0`` adds the paper's instance optimisation on the same embedding (Adam, cosine
    similarity, diffusion regulariser) on the embedding's grid."""
    estimator: nn.Module = samconvex_pyramid(features, image_resample_factor=features.preprocessing.resample_factor,
                                             levels=levels, radii=radii)
    if io_iterations > 0:
        estimator = Refined(estimator, InstanceOptimisation(similarity="neg_cos", iterations=io_iterations,
                                                            smooth_weight=1.25))
    return IntensityMapped(estimator, features.preprocessing)


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
