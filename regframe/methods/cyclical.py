"""Cyclical self-training (CST; Bigalke et al., MICCAI 2023).

A network (by default ``f = h∘g``, :class:`~regframe.estimators.feature_convex.FeatureConvexEstimator`)
is trained to reproduce pseudo-label fields; the pseudo labels come from the full wrapped estimator
(by default ``Refined(TwoStep(InverseConsistent(h∘g)))``: ICE, second warp, Adam IO) of the previous
stage's network, and at stage 0 of a randomly initialised network. The module is a
:class:`~regframe.stages.SelfTraining` module: label refreshes are driven by
:class:`callbacks.pseudo_labels.PseudoLabelRefresh`, weighted sampling by
:class:`callbacks.sampling.DifficultyWeightedSampling`, the per-stage Dice table by
:class:`callbacks.stages.SelfTrainingStages`; the learning rate restarts at every stage start
through the module's step-wise scheduler.

Stage numbering: stage 0 = the random network's labels; training stage ``t = 1..stages``
(``schedule`` index ``t - 1``) covers epochs ``[(t-1) E, t E)`` with ``E = epochs_per_stage`` and
learns from the labels of stage ``t-1``.

:class:`SelfTrainingLoop` holds this loop; :class:`CyclicalSelfTraining` adds what is specific to
images (label grid, augmentation, end-point-error loss on the grid, Dice), and
:class:`~regframe.methods.cyclical_points.PointCyclicalSelfTraining` what is specific to keypoint clouds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from regframe import pseudo_labels
from regframe.augment import PairAffineAugmentation
from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.estimators.protocols import field_at, trained_network
from regframe.estimators.two_step import TwoStep
from regframe.features.cnn import he_initialise
from regframe.losses import end_point_error
from regframe.methods.base import RegistrationModule
from regframe.pseudo_labels import MANIFEST, PseudoLabelStore
from regframe.run_config import run_directory
from regframe.stages import StageLRSchedulerCallable, StageSchedule, optimizer_steps_per_epoch


STAGE0_INITS = ("default", "kaiming")


def _reinitialise(module: torch.nn.Module, seed: int, init: str = "default") -> None:
    """Fresh random weights (and BatchNorm statistics) for every sub-module, reproducibly. Children
    are reset before their parents, so a parent's own initialisation scheme has the last word.
    ``init="kaiming"`` then He-initialises every convolution (fan-in, ReLU gain, zero bias)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in reversed(list(module.modules())):
            if hasattr(child, "reset_parameters"):
                child.reset_parameters()
            if hasattr(child, "reset_running_stats"):
                child.reset_running_stats()
            if init == "kaiming" and isinstance(child, torch.nn.modules.conv._ConvNd):
                he_initialise(child)


class SelfTrainingLoop:
    """What cyclical self-training does whatever it registers (images or point clouds): the stage
    schedule, the stage-wise learning-rate schedule, the pseudo-label store (opened, reopened on resume,
    recorded in checkpoints), the random stage-0 network and the training step against stored labels.
    A :class:`~regframe.stages.SelfTraining` module mixes it in before its LightningModule base, calls
    :meth:`init_self_training` in ``__init__`` and supplies the problem-specific parts:
    :meth:`pseudo_label_layout`, ``generate_pseudo_labels`` and :meth:`pseudo_label_batch_loss`."""

    estimator: torch.nn.Module
    optimizer_factory: Any
    lr_scheduler_factory: Any

    def init_self_training(self, stages: int, epochs_per_stage: int, pseudo_label_dir: str | None,
                           random_init_seed: int, stage0_init: str) -> None:
        """Check and keep the self-training settings (see :class:`CyclicalSelfTraining`)."""
        if stages < 1 or epochs_per_stage < 1:
            raise RegframeInputError(f"stages ({stages}) and epochs_per_stage ({epochs_per_stage}) must be >= 1")
        self.schedule = StageSchedule.repeated("self_training", stages, epochs_per_stage)
        if stage0_init not in STAGE0_INITS:
            raise RegframeInputError(f"stage0_init must be one of {STAGE0_INITS}, got {stage0_init!r}")
        self.pseudo_label_dir = pseudo_label_dir
        self.random_init_seed = random_init_seed
        self.stage0_init = stage0_init
        self.store: PseudoLabelStore | None = None
        self.stage_dice: dict[int, float] = {}
        self._resume: dict | None = None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimiser, and the scheduler built for the steps of one stage, stepped every
        optimiser step (so Lightning checkpoints its position and a resumed run continues it)."""
        optimizer = self.optimizer_factory(self.estimator.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        steps_per_stage = self.schedule.stages[0].epochs * optimizer_steps_per_epoch(self.trainer)
        scheduler = self.lr_scheduler_factory(optimizer, steps_per_stage)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ pseudo labels
    def pseudo_label_layout(self, datamodule: Any) -> tuple[int, tuple[int, ...]]:
        """Number of training pairs and the shape of one pair's pseudo label in the store."""
        raise NotImplementedError

    def open_pseudo_labels(self, trainer: pl.Trainer) -> PseudoLabelStore:
        """Create or reopen the store (a resumed run reopens the path and stage its checkpoint recorded)."""
        num_pairs, shape = self.pseudo_label_layout(trainer.datamodule)
        if self._resume is not None:
            root = Path(self._resume["root"])
        elif self.pseudo_label_dir is not None:
            root = Path(self.pseudo_label_dir)
        else:
            root = run_directory(trainer) / "pseudo_labels"
        fresh = self._resume is None
        if fresh and (root / MANIFEST).exists():
            rank_zero_warn(f"pseudo labels: {root} holds labels of an earlier run; this run does not resume "
                           "from a checkpoint, so it starts again from stage 0 and replaces them")
        self.store = PseudoLabelStore(root, num_pairs, shape, fresh=fresh)
        if self._resume is not None and self._resume.get("stage") is not None:
            self.store.use_stage(int(self._resume["stage"]))
        return self.store

    def random_stage0_estimator(self) -> torch.nn.Module:
        """A copy of the whole estimator whose trained network is freshly random (stage-0 labels)."""
        estimator = copy.deepcopy(self.estimator)
        _reinitialise(trained_network(estimator), self.random_init_seed, self.stage0_init)
        return estimator

    # ------------------------------------------------------------------ training
    def pseudo_label_batch_loss(self, batch: Mapping[str, Any], labels: Tensor) -> Tensor:
        """The training loss of ``batch`` against the stored ``labels`` of its pairs (``pair_index``)."""
        raise NotImplementedError

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        if self.store is None:
            raise RegframeInputError("no pseudo labels: add callbacks.pseudo_labels.PseudoLabelRefresh to the trainer")
        labels = self.store.read(batch["pair_index"], device=self.device)
        loss = self.pseudo_label_batch_loss(batch, labels)
        self.log("train/epe_mm", loss, prog_bar=True, batch_size=len(batch["pair_index"]))
        return loss

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["cst"] = {
            "root": str(self.store.root) if self.store is not None else None,
            "stage": self.store.served_stage if self.store is not None else None,
            "stage_dice": dict(self.stage_dice),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("cst") or {}
        self.stage_dice = {int(k): float(v) for k, v in (state.get("stage_dice") or {}).items()}
        self._resume = state if state.get("root") else None


class CyclicalSelfTraining(SelfTrainingLoop, RegistrationModule):
    """CST LightningModule.

    Args:
        estimator: any estimator with ``refine`` (:class:`~regframe.estimators.refine.Refined` around
            the network, optionally with :class:`~regframe.estimators.two_step.TwoStep` and
            :class:`~regframe.estimators.inverse_consistent.InverseConsistent` inside); the innermost
            network (:func:`~regframe.estimators.protocols.trained_network`) is trained, the whole
            estimator produces pseudo labels and validation/test fields. Default: CST's
            ``Refined(TwoStep(InverseConsistent(h∘g)))`` (:func:`~regframe.estimators.cst_pipeline.cst_pipeline`).
        optimizer: optimiser factory over the estimator's parameters; its ``lr`` is the top of
            every stage's cosine (paper: Adam, 1e-3).
        lr_scheduler: scheduler factory called with the optimiser and the optimiser steps per stage,
            stepped every optimiser step (paper: ``CosineAnnealingWarmRestarts`` with ``eta_min``
            1e-5, a warm restart at every stage start); ``None`` keeps the learning rate constant.
        stages: number of training stages ``T`` (paper: 8).
        epochs_per_stage: epochs per stage (paper: 1000 iterations; 190 pairs at batch 2 = 95
            iterations per epoch, so 11 epochs).
        label_resample_factor: pseudo labels and the loss live on the image grid resampled by this
            factor (0.5 = half resolution).
        loss_crop: voxels of the label grid ignored at every border in the loss (paper: 8 at half res).
        augment: asymmetric random affine augmentation of the learning stream.
        sigma_fixed, sigma_moving_extra: its strengths (normalised-coordinate matrix entries).
        pseudo_label_dir: where the pseudo-label store lives (default ``<run dir>/pseudo_labels``, see
            :func:`regframe.run_config.run_directory`: per run, never inside W&B's uploaded ``files``).
        pseudo_label_batch: pairs per forward pass when generating labels.
        random_init_seed: seed of the random stage-0 network (distinct from the trained one).
        stage0_init: initialisation of that random network: ``"kaiming"`` (He, the default) keeps the
            feature magnitude through the layers, so its correlation is informative; with PyTorch's
            ``"default"`` init the features of a fresh network (eval mode, unit BatchNorm statistics)
            shrink layer by layer and the soft arg-min returns almost zero displacement. The trained
            network keeps its own initialisation.
        amp: run the feature CNN under bfloat16 autocast on CUDA (the optimiser stays float32).
        training_passes: passes of the trained network in the loss: 1 (the paper) trains ``h∘g`` alone,
            whose reach is one search radius at the feature stride; 2 trains it twice with shared
            weights (:class:`~regframe.estimators.two_step.TwoStep`: register, warp, register again),
            as the pseudo labels' second warp is made, so labels beyond one pass's reach can be fitted.
    """

    def __init__(
        self,
        estimator: DisplacementEstimator | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: StageLRSchedulerCallable | None = None,
        stages: int = 8,
        epochs_per_stage: int = 11,
        label_resample_factor: float = 0.5,
        loss_crop: int = 8,
        augment: bool = True,
        sigma_fixed: float = 0.075,
        sigma_moving_extra: float = 0.05,
        pseudo_label_dir: str | None = None,
        pseudo_label_batch: int = 1,
        random_init_seed: int = 1234,
        stage0_init: str = "kaiming",
        amp: bool = True,
        label_warp: str = "nearest",
        compute_hd95: bool = True,
        training_passes: int = 1,
    ) -> None:
        estimator = estimator if estimator is not None else cst_pipeline()
        if not callable(getattr(estimator, "refine", None)):
            raise RegframeInputError(f"CyclicalSelfTraining: estimator {type(estimator).__name__} has no refine(); wrap it "
                                     "in regframe.estimators.refine.Refined (io.iterations: 0 for no Adam)")
        super().__init__(estimator, optimizer, lr_scheduler, label_warp, compute_hd95)
        self.init_self_training(stages, epochs_per_stage, pseudo_label_dir, random_init_seed, stage0_init)
        if loss_crop < 0:
            raise RegframeInputError(f"model.init_args.loss_crop must be >= 0, got {loss_crop}")
        self.label_resample_factor = label_resample_factor
        self.loss_crop = loss_crop
        self.augmentation = PairAffineAugmentation(sigma_fixed, sigma_moving_extra) if augment else None
        self.pseudo_label_batch = pseudo_label_batch
        self.amp = amp
        if training_passes not in (1, 2):
            raise RegframeInputError(f"model.init_args.training_passes must be 1 or 2, got {training_passes}")
        self.training_passes = training_passes

    def training_network(self) -> torch.nn.Module:
        """What the loss trains: the trained network, once or (``training_passes=2``) twice with shared weights."""
        network = trained_network(self.estimator)
        return network if self.training_passes == 1 else TwoStep(network)

    # ------------------------------------------------------------------ pseudo labels
    def label_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(math.floor(n * self.label_resample_factor) for n in image_shape)

    def check_loss_crop(self, image_shape: tuple[int, ...]) -> None:
        """``loss_crop`` must leave at least one voxel per axis of the label grid of ``image_shape``
        (else the loss is the mean over nothing: NaN with zero gradients)."""
        grid = self.label_shape(image_shape)
        if any(n - 2 * self.loss_crop < 1 for n in grid):
            raise RegframeInputError(
                f"model.init_args.loss_crop={self.loss_crop} crops away the whole label grid {grid} (image grid "
                f"{image_shape} x label_resample_factor {self.label_resample_factor}); use at most "
                f"{max((min(grid) - 1) // 2, 0)}")

    def setup(self, stage: str) -> None:
        """Before fitting (data loaded, nothing trained yet): check ``loss_crop`` against the label grid."""
        datamodule = self.trainer.datamodule
        if stage == "fit" and datamodule is not None and getattr(datamodule, "train_subjects", None):
            self.check_loss_crop(tuple(datamodule.train_subjects[0]["image"].shape[1:]))

    def pseudo_label_layout(self, datamodule: Any) -> tuple[int, tuple[int, ...]]:
        """One field ``(D, *label grid)`` per training pair."""
        if datamodule is None or not getattr(datamodule, "train_pairs", None):
            raise RegframeInputError("CyclicalSelfTraining needs a datamodule with train_subjects/train_pairs")
        image_shape = tuple(datamodule.train_subjects[0]["image"].shape[1:])
        return len(datamodule.train_pairs), (len(image_shape), *self.label_shape(image_shape))

    def generate_pseudo_labels(self, datamodule: Any, stage: int, estimator: DisplacementEstimator | None = None) -> Tensor:
        """Store the refined fields of ``estimator`` (default: the trained pipeline) for every
        training pair as ``stage`` at the label resolution; return the per-pair difficulty (see
        :func:`regframe.pseudo_labels.generate_pseudo_labels`)."""
        if self.store is None:
            raise RegframeInputError("pseudo-label store not opened (call open_pseudo_labels first)")
        images = [subject["image"] for subject in datamodule.train_subjects]
        return pseudo_labels.generate_pseudo_labels(
            estimator if estimator is not None else self.estimator, images, datamodule.train_pairs, self.store,
            stage, self.label_shape(tuple(images[0].shape[1:])), self.pseudo_label_batch, self.device)

    # ------------------------------------------------------------------ training
    def pseudo_label_loss(self, fixed: Tensor, moving: Tensor, target: Tensor, spacing: Tensor | None = None) -> Tensor:
        """CST's learning-stream loss: the asymmetric augmentation (if on), the field of
        :meth:`training_network` on the label grid of ``target (B, D, *L)`` (voxels of that grid; bf16
        autocast on CUDA with ``amp``), and the mean end-point error in mm against ``target``, ignoring
        ``loss_crop`` voxels at every border. ``spacing (B, D)``: mm per voxel of the image grid (default 1)."""
        if self.augmentation is not None:
            fixed, moving, target = self.augmentation(fixed, moving, target)
        use_amp = self.amp and fixed.device.type == "cuda"
        with torch.autocast(device_type=fixed.device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = field_at(self.training_network(), fixed, moving, target.shape[2:])
        dims = fixed.dim() - 2
        spacing = spacing.to(pred) if spacing is not None else torch.ones(fixed.shape[0], dims, device=pred.device)
        mm = (spacing / self.label_resample_factor).view(-1, dims, *([1] * dims))
        return end_point_error(pred.float() * mm, target * mm, spacing=[1.0] * dims, crop=self.loss_crop)

    def pseudo_label_batch_loss(self, batch: Mapping[str, Any], labels: Tensor) -> Tensor:
        return self.pseudo_label_loss(batch["fixed"], batch["moving"], labels, batch.get("spacing"))

    # ------------------------------------------------------------------ evaluation helpers
    @torch.no_grad()
    def mean_val_dice(self, estimator: DisplacementEstimator, dataloader: Any) -> float:
        """Mean Dice of ``estimator`` (eval mode) over a validation dataloader."""
        from regframe.metrics import pair_metrics

        was_training = estimator.training
        estimator.eval()
        scores = []
        for batch in dataloader:
            disp = estimator(batch["fixed"].to(self.device), batch["moving"].to(self.device)).float().cpu()
            for i in range(disp.shape[0]):
                scores.append(pair_metrics(batch["fixed_label"][i:i + 1], batch["moving_label"][i:i + 1],
                                           disp[i:i + 1], hd95=False)["dice"])
        estimator.train(was_training)
        finite = [s for s in scores if math.isfinite(s)]
        return sum(finite) / max(len(finite), 1)
