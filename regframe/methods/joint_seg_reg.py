"""JRSS: joint few-shot segmentation and registration self-training (Shi et al., 2023).

One LightningModule trains a segmenter ``ψ_s`` and a registration estimator ``ψ_r`` in stages of a
:class:`~regframe.stages.StageSchedule` (a pure function of the epoch, so a resumed run resumes its stage):

1. ``seg_pretrain`` – ``ψ_s`` on the N labelled subjects with soft Dice (the Mono-Seg baseline).
2. ``reg_pretrain`` – ``ψ_r`` with the label-supervised registration loss (MSE + smooth_weight·diffusion +
   dice_weight·soft Dice, :mod:`regframe.objectives.label_supervised_registration`) on true labels where
   both subjects are labelled (the Mono-Reg baseline).
3. ``rounds`` × (``reg_epochs_per_round`` of ``reg_joint`` then ``seg_epochs_per_round`` of ``student``),
   registration first as in the paper: ``ψ_r`` learns with Dice on true labels or on the EMA teacher's
   screened pseudo labels (:func:`~regframe.objectives.screening.screen_pseudo_labels`: a voxel keeps its
   pseudo label only where the teacher's largest class probability exceeds ``tau``); then the student
   (dropout ``student_dropout``) learns with :class:`~regframe.objectives.segmentation.StudentLoss` from
   true and screened pseudo labels, with moving images warped by ``ψ_r`` as input noise. With
   ``teacher_input="clean"`` the teacher labels the unwarped moving image and its probabilities are warped
   with the same field (the deformation is noise for the student only); ``"warped"`` feeds the teacher the
   warped image (ablation). The share of unlabelled voxels that keep a pseudo label is logged as
   ``train/pseudo_kept``.

One network trains at a time: the other runs in eval mode (no BatchNorm statistics updated) and without
gradients. ``reg_steps`` counts registration optimiser steps over all registration stages (the
``smooth_weight`` warm-up), so Mono-Reg and JRSS share one warm-up; it travels in checkpoints and with
``estimator_init``.

``mode="mono_seg"`` / ``"mono_reg"`` run only stage 1 / 2 for all epochs (the baselines).
``mode="frozen_pseudo_reg"`` (control isolating joint training): stages 1 and 2, then
``rounds × reg_epochs_per_round`` epochs of ``reg_joint`` whose teacher is the segmenter itself, never
updated (the Mono-Seg segmenter; give ``segmenter_init`` and ``seg_pretrain_epochs=0`` to use a trained one).
Teacher of ``mode="joint"``: held by an EMA callback (``callbacks.ema.EMATeacher``, required), which
this module reaches only through the :class:`~regframe.stages.TeacherUser` protocol; the callback
restarts it from the Mono-Seg segmenter at the start of stage 3 (``EMATeacher(ramp=False,
buffers="keep")``, decay 0.99). ``bn_recalibration`` re-estimates the BatchNorm statistics of student
and teacher after every student epoch without dropout: statistics copied from a student trained with
dropout made the teacher's pseudo labels shrink epoch after epoch on the prostate.
``final_segmenter="teacher"`` ends training with the teacher's weights in ``segmenter`` (mean-teacher
practice; chosen on prostate validation subjects).
Which subjects are labelled: ``num_labelled`` drawn with ``labelled_seed`` from the data module's
``train_subjects`` (or listed in ``labelled_subjects``); the chosen ids are written to ``hparams``. Labels
of the other training subjects are never read.
``seg_dice_background`` puts the background in Mono-Seg's soft Dice (``seg_pretrain``), as one of the
K class Dice terms averaged. On LPBA40 (56 structures) it did not stop Mono-Seg from labelling most of
the background as one structure (benchmarks/jrss_lpba40_results.md); off by default.
``seg_ce_weight`` adds ``seg_ce_weight`` × the student's class-weighted cross-entropy to Mono-Seg's soft
Dice (a departure from the paper's Dice-only step 1, for many-class label maps: the cross-entropy scores
every voxel, background included); 0 (the paper) by default.
``label_groups`` (e.g. ``"lpba40"``, :mod:`regframe.label_groups`) adds the segmentation Dice of groups of
labels merged into one at validation and test, mapping classes back to label codes through the data
module's ``label_codes``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.label_groups import grouped_dice, named_groups
from regframe.losses import soft_dice
from regframe.methods.base import RegistrationModule
from regframe.metrics import dice_per_label
from regframe.objectives.label_supervised_registration import LabelSupervisedRegistrationLoss
from regframe.objectives.screening import screen_pseudo_labels
from regframe.objectives.segmentation import StudentLoss, inverse_sqrt_frequency_weights, weighted_cross_entropy
from regframe.segmenters.base import Segmenter
from regframe.segmenters.dropout import recalibrate_batchnorm, set_dropout
from regframe.spatial import warp
from regframe.stages import StageSchedule

STAGE_KINDS = ("seg_pretrain", "reg_pretrain", "student", "reg_joint")


def jrss_schedule(mode: str, seg_pretrain_epochs: int, reg_pretrain_epochs: int, rounds: int,
                  seg_epochs_per_round: int, reg_epochs_per_round: int) -> StageSchedule:
    """The stages of a run of ``mode`` (stages of 0 epochs are left out); the baselines have one stage,
    ``frozen_pseudo_reg`` JRSS's stages without the student epochs."""
    if mode == "mono_seg":
        return StageSchedule([("seg_pretrain", seg_pretrain_epochs)])
    if mode == "mono_reg":
        return StageSchedule([("reg_pretrain", reg_pretrain_epochs)])
    stages = [("seg_pretrain", seg_pretrain_epochs), ("reg_pretrain", reg_pretrain_epochs)]
    if mode == "frozen_pseudo_reg":
        stages.append(("reg_joint", rounds * reg_epochs_per_round))
    else:
        stages += [("reg_joint", reg_epochs_per_round), ("student", seg_epochs_per_round)] * rounds
    return StageSchedule([(name, epochs) for name, epochs in stages if epochs > 0])


class JointSegRegSelfTraining(RegistrationModule):
    """JRSS and its Mono-Seg / Mono-Reg baselines. Epoch counts are in Lightning epochs (use the
    trainer's ``limit_train_batches`` to size them); ``max_epochs`` should cover ``schedule.total_epochs``.
    Implements :class:`~regframe.stages.EMAStudent` and :class:`~regframe.stages.TeacherUser`."""

    def __init__(self, estimator: DisplacementEstimator, segmenter: Segmenter,
                 mode: Literal["joint", "mono_seg", "mono_reg", "frozen_pseudo_reg"] = "joint",
                 num_labelled: int | None = 5, labelled_seed: int = 0, labelled_subjects: list[str] | None = None,
                 seg_pretrain_epochs: int = 10, reg_pretrain_epochs: int = 10, rounds: int = 3,
                 reg_epochs_per_round: int = 5, seg_epochs_per_round: int = 1,
                 tau: float = 0.6, uncertainty_weight: float = 0.5, dice_weight: float = 0.1,
                 seg_dice_weight: float = 1.0, seg_dice_background: bool = False, seg_ce_weight: float = 0.0,
                 smooth_weight: float = 0.025, smooth_weight_warmup: float = 0.1,
                 warmup_steps: int = 300, student_dropout: float = 0.5, seg_batch_size: int = 2,
                 ce_class_weighting: bool = True, bn_recalibration: bool = True,
                 final_segmenter: Literal["student", "teacher"] = "teacher",
                 teacher_input: Literal["clean", "warped"] = "clean",
                 seg_lr: float = 1e-3, seg_weight_decay: float = 1e-4, reg_lr: float = 4e-4, lr_decay: float = 0.99,
                 segmenter_init: str | None = None, estimator_init: str | None = None,
                 label_warp: str = "nearest", compute_hd95: bool = True, label_groups: str | None = None) -> None:
        super().__init__(estimator=estimator, label_warp=label_warp, compute_hd95=compute_hd95)
        if seg_ce_weight < 0:
            raise RegframeInputError(f"seg_ce_weight must be >= 0, got {seg_ce_weight}")
        self.label_groups = named_groups(label_groups) if label_groups is not None else None
        self.segmenter = segmenter
        self.student_loss = StudentLoss(uncertainty_weight, seg_dice_weight)
        self.registration_loss = LabelSupervisedRegistrationLoss(smooth_weight, smooth_weight_warmup, warmup_steps,
                                                                 dice_weight)
        self.schedule = jrss_schedule(mode, seg_pretrain_epochs, reg_pretrain_epochs, rounds,
                                      seg_epochs_per_round, reg_epochs_per_round)
        self.joint_start_epoch = seg_pretrain_epochs + reg_pretrain_epochs if mode == "joint" else None
        self.automatic_optimization = False
        self.reg_steps = 0
        self.class_weights: Tensor | None = None
        self._student_updated = False
        self._labelled: Tensor | None = None
        self._teacher: Callable[[], nn.Module] | None = None
        if segmenter_init:
            self._load_part(segmenter_init, "segmenter")
        if estimator_init:
            self._load_part(estimator_init, "estimator")

    @property
    def stage(self) -> str:
        """The stage of the current epoch: one of :data:`STAGE_KINDS`."""
        return self.schedule.stage_at(self.current_epoch).name

    # ---- set-up ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None or self._labelled is not None:
            return
        subjects = datamodule.train_subjects
        ids = [s["id"] for s in subjects]
        h = self.hparams
        if h.labelled_subjects is not None:
            unknown = sorted(set(h.labelled_subjects) - set(ids))
            if unknown:
                raise RegframeInputError(f"labelled_subjects: {unknown} are not training subjects of the data module")
            chosen = [ids.index(i) for i in h.labelled_subjects]
        elif h.num_labelled is None:
            chosen = list(range(len(ids)))
        else:
            with_labels = [i for i, s in enumerate(subjects) if s.get("label") is not None]
            if h.num_labelled > len(with_labels):
                raise RegframeInputError(f"num_labelled={h.num_labelled} but only {len(with_labels)} training "
                                         "subjects have labels")
            chosen = sorted(random.Random(h.labelled_seed).sample(with_labels, h.num_labelled))
        self._labelled = torch.zeros(len(ids), dtype=torch.bool)
        self._labelled[chosen] = True
        self.hparams["labelled_ids"] = [ids[i] for i in chosen]
        k = self.segmenter.num_classes
        self.class_weights = (inverse_sqrt_frequency_weights([subjects[i]["label"] for i in chosen], k)
                              if h.ce_class_weighting else torch.ones(k))

    def _load_part(self, checkpoint_path: str, prefix: str) -> None:
        """Load ``prefix`` (``segmenter`` or ``estimator``) from a checkpoint; an estimator also brings its
        registration step count, so the ``smooth_weight`` warm-up goes on where that training left off."""
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not part:
            raise RegframeInputError(f"{checkpoint_path}: no '{prefix}.*' weights in the checkpoint")
        getattr(self, prefix).load_state_dict(part)
        if prefix == "estimator":
            self.reg_steps = int(checkpoint.get("jrss", {}).get("reg_steps", 0))

    def configure_optimizers(self) -> Any:
        h = self.hparams
        reg_opt = torch.optim.Adam(self.estimator.parameters(), lr=h.reg_lr)
        seg_opt = torch.optim.Adam(self.segmenter.parameters(), lr=h.seg_lr, weight_decay=h.seg_weight_decay)
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=h.lr_decay) for o in (reg_opt, seg_opt)]
        return [reg_opt, seg_opt], schedulers

    # ---- EMAStudent and TeacherUser (regframe.stages) -------------------------------------
    def ema_student(self) -> nn.Module:
        return self.segmenter

    def student_updated(self) -> bool:
        return self._student_updated

    def attach_teacher(self, teacher: Callable[[], nn.Module]) -> None:
        self._teacher = teacher

    def teacher_restart_due(self) -> bool:
        """At the start of stage 3 the pre-trained segmenter becomes the first teacher."""
        return self.current_epoch == self.joint_start_epoch

    def teacher(self) -> nn.Module:
        """The EMA teacher network handed over by the EMA callback; ``mode="frozen_pseudo_reg"``: the
        segmenter, which that mode never trains after ``seg_pretrain``."""
        if self.hparams.mode == "frozen_pseudo_reg":
            return self.segmenter
        if self._teacher is None:
            raise RegframeInputError("trainer.callbacks: JRSS (mode='joint') needs an EMA teacher callback "
                                     "(callbacks.ema.EMATeacher)")
        return self._teacher()

    # ---- training -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.hparams.mode == "joint":
            self.teacher()                                   # fail before training without a teacher

    def on_train_epoch_start(self) -> None:
        stage = self.stage
        set_dropout(self.segmenter, self.hparams.student_dropout if stage == "student" else 0.0)
        self.log("stage", float(STAGE_KINDS.index(stage)))

    def on_train_epoch_end(self) -> None:
        if self.stage == "student" and self.hparams.bn_recalibration:
            images = [s["image"] for s in self.trainer.datamodule.train_subjects]
            recalibrate_batchnorm(self.segmenter, images, self.hparams.seg_batch_size)
            recalibrate_batchnorm(self.teacher(), images, self.hparams.seg_batch_size)
        reg_sched, seg_sched = self.lr_schedulers()
        (seg_sched if self.stage in ("seg_pretrain", "student") else reg_sched).step()

    def on_fit_end(self) -> None:
        """``final_segmenter="teacher"``: the EMA teacher's weights become the segmenter (mean-teacher
        practice), and the run's final checkpoint (the checkpoint callback's last one) is written again
        with them, so that ``test --ckpt_path`` and ``register --checkpoint`` use the teacher like the
        evaluation right after fitting. Checkpoints written earlier keep the student in ``segmenter`` and
        the teacher in the EMA callback's state."""
        if self.hparams.mode == "joint" and self.hparams.final_segmenter == "teacher":
            self.segmenter.load_state_dict(self.teacher().state_dict())
            checkpoint = self.trainer.checkpoint_callback
            final = checkpoint and (getattr(checkpoint, "last_model_path", "") or checkpoint.best_model_path)
            if final:
                self.trainer.save_checkpoint(final)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._student_updated = False
        stage = self.stage
        segmenter_trains = stage in ("seg_pretrain", "student")
        self.segmenter.train(segmenter_trains)              # the frozen network keeps its BatchNorm statistics
        self.estimator.train(not segmenter_trains)
        if stage == "seg_pretrain":
            loss = self._seg_pretrain_loss()
            optimizer = self.optimizers()[1]
        elif stage == "student":
            loss = self._student_loss(batch)
            optimizer = self.optimizers()[1]
        else:
            loss = self._registration_loss(batch, use_pseudo=stage == "reg_joint")
            optimizer = self.optimizers()[0]
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        if stage == "student":
            self._student_updated = True
        if stage in ("reg_pretrain", "reg_joint"):
            self.reg_steps += 1
        self.log(f"train/loss_{stage}", loss.detach(), prog_bar=True, batch_size=batch["fixed"].shape[0])
        return loss.detach()

    def _onehot(self, label: Tensor) -> Tensor:
        """``(B, 1, *S)`` long -> ``(B, K, *S)`` float."""
        return F.one_hot(label[:, 0].long(), self.segmenter.num_classes).movedim(-1, 1).float()

    def _pair_labelled(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Whether the fixed and the moving subject of each pair are labelled, each ``(B,)`` bool."""
        if "pair_index" not in batch:
            raise RegframeInputError("batch: JRSS needs 'pair_index' in training batches")
        pairs = self.trainer.datamodule.train_pairs
        index = batch["pair_index"].tolist()
        fixed = torch.tensor([bool(self._labelled[pairs[i][0]]) for i in index], device=self.device)
        moving = torch.tensor([bool(self._labelled[pairs[i][1]]) for i in index], device=self.device)
        return fixed, moving

    def _labelled_images(self) -> tuple[Tensor, Tensor]:
        """A random batch of labelled subjects: images ``(b, 1, *S)`` and one-hot labels ``(b, K, *S)``."""
        subjects = self.trainer.datamodule.train_subjects
        indices = torch.nonzero(self._labelled).flatten().tolist()
        picks = random.sample(indices, min(self.hparams.seg_batch_size, len(indices)))
        images = torch.stack([subjects[i]["image"] for i in picks]).to(self.device).float()
        labels = torch.stack([subjects[i]["label"] for i in picks]).to(self.device)
        return images, self._onehot(labels)

    def _seg_pretrain_loss(self) -> Tensor:
        images, onehot = self._labelled_images()
        logits = self.segmenter(images)
        probs = logits.softmax(dim=1)
        loss = soft_dice(probs, onehot, include_background=self.hparams.seg_dice_background)
        self.log("train/seg_dice_loss", loss.detach(), batch_size=images.shape[0])
        if self.hparams.seg_ce_weight > 0:
            ce = weighted_cross_entropy(logits, onehot, self.class_weights.to(logits.device))
            self.log("train/seg_ce_loss", ce.detach(), batch_size=images.shape[0])
            loss = loss + self.hparams.seg_ce_weight * ce
        return loss

    def _teacher_probs(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher()(images).softmax(dim=1)

    def _student_inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """The student's pair images ``[fixed; moving warped by ψ_r]`` ``(2B, 1, *S)``, the teacher's
        probabilities on them ``(2B, K, *S)`` and the field ``(B, D, *S)``, all without gradients.
        ``teacher_input="clean"``: the teacher sees the unwarped moving image and its probabilities are
        warped with the same field; ``"warped"``: the teacher sees the student's warped image."""
        fixed, moving = batch["fixed"], batch["moving"]
        with torch.no_grad():
            disp = self.estimator(fixed, moving)
            moving_warped = warp(moving, disp)
            if self.hparams.teacher_input == "clean":
                probs = self._teacher_probs(torch.cat([fixed, moving]))
                probs = torch.cat([probs[: len(fixed)], warp(probs[len(fixed):], disp)])
            else:
                probs = self._teacher_probs(torch.cat([fixed, moving_warped]))
        return torch.cat([fixed, moving_warped]), probs, disp

    def _student_loss(self, batch: dict[str, Any]) -> Tensor:
        """:class:`StudentLoss` on ``[fixed; registration-warped moving]`` of the batch's pairs plus a random
        batch of labelled subjects; targets: true labels where labelled, screened teacher labels elsewhere."""
        fixed_lab, moving_lab = self._pair_labelled(batch)
        images, teacher, disp = self._student_inputs(batch)
        pairs = len(fixed_lab)
        labelled = torch.cat([fixed_lab, moving_lab])
        pseudo, valid = screen_pseudo_labels(teacher, self.hparams.tau)
        true = torch.zeros_like(pseudo)
        if fixed_lab.any():
            true[:pairs][fixed_lab] = self._onehot(batch["fixed_label"][fixed_lab])
        if moving_lab.any():
            true[pairs:][moving_lab] = warp(self._onehot(batch["moving_label"][moving_lab]), disp[moving_lab])
        lab_images, lab_onehot = self._labelled_images()
        logits = self.segmenter(torch.cat([images, lab_images]))
        terms = self.student_loss(logits[: len(images)], true, labelled, pseudo, teacher, logits[len(images):],
                                  lab_onehot, self.class_weights.to(self.device))
        self.log_dict({"train/ce_labelled": terms.ce_labelled.detach(), "train/ce_pseudo": terms.ce_pseudo.detach(),
                       "train/sym_kl": terms.sym_kl.detach(), "train/weak_dice_seg": terms.registration_dice.detach()},
                      batch_size=images.shape[0])
        self._log_pseudo_kept(valid[~labelled])
        return terms.loss

    def _log_pseudo_kept(self, valid: Tensor) -> None:
        """``train/pseudo_kept``: the share of unlabelled voxels that keep a pseudo label (``valid (b, 1, *S)``)."""
        if len(valid):
            self.log("train/pseudo_kept", valid.mean(), batch_size=len(valid))

    def _registration_loss(self, batch: dict[str, Any], use_pseudo: bool) -> Tensor:
        """:class:`LabelSupervisedRegistrationLoss` with Dice on the voxels (pseudo-)labelled in both subjects."""
        fixed, moving = batch["fixed"], batch["moving"]
        disp = self.estimator(fixed, moving)
        fixed_lab, moving_lab = self._pair_labelled(batch)
        fixed_target, fixed_valid = self._labels_or_pseudo(batch.get("fixed_label"), fixed, fixed_lab, use_pseudo)
        moving_target, moving_valid = self._labels_or_pseudo(batch.get("moving_label"), moving, moving_lab,
                                                             use_pseudo)
        terms = self.registration_loss(fixed, moving, disp, fixed_target, moving_target, fixed_valid, moving_valid,
                                       self.reg_steps)
        self.log_dict({"train/reg_mse": terms.mse.detach(), "train/reg_diffusion": terms.diffusion.detach(),
                       "train/reg_dice_loss": terms.dice.detach(), "train/smooth_weight": terms.smooth_weight},
                      batch_size=fixed.shape[0])
        if use_pseudo:
            self._log_pseudo_kept(torch.cat([fixed_valid[~fixed_lab], moving_valid[~moving_lab]]))
        return terms.loss

    def _labels_or_pseudo(self, label: Tensor | None, image: Tensor, labelled: Tensor,
                          use_pseudo: bool) -> tuple[Tensor, Tensor]:
        """One-hot targets ``(B, K, *S)`` and where they hold ``(B, 1, *S)`` float: true labels where
        ``labelled`` (every voxel), screened teacher pseudo labels elsewhere (if ``use_pseudo``), else none.
        Only the labelled rows of ``label`` are read."""
        k = self.segmenter.num_classes
        onehot = image.new_zeros(image.shape[0], k, *image.shape[2:])
        valid = image.new_zeros(image.shape[0], 1, *image.shape[2:])
        if labelled.any():
            onehot[labelled] = self._onehot(label[labelled])
            valid[labelled] = 1.0
        if use_pseudo and (~labelled).any():
            onehot[~labelled], valid[~labelled] = screen_pseudo_labels(self._teacher_probs(image[~labelled]),
                                                                       self.hparams.tau)
        return onehot, valid

    # ---- evaluation -----------------------------------------------------------------------
    def _log_segmentation(self, batch: dict[str, Any], prefix: str) -> None:
        """Mean foreground Dice of the segmenter on the fixed and the moving image, over the classes in each
        true label map (``{prefix}/seg_dice``);
        with ``label_groups``, also the Dice of each group of labels merged into one
        (``{prefix}/seg_dice_{group}``) and their mean (``{prefix}/seg_dice_grouped``)."""
        scores, grouped = [], defaultdict(list)
        groups = self.label_groups
        codes = self._class_codes() if groups is not None else None
        for key in ("fixed", "moving"):
            if f"{key}_label" not in batch:
                continue
            predicted = self.segmenter(batch[key]).argmax(dim=1)
            truth = batch[f"{key}_label"][:, 0].long()
            for item_truth, item_predicted in zip(truth, predicted):
                present = [c for c in item_truth.unique().tolist() if c > 0]
                scores += dice_per_label(item_truth, item_predicted, present).values()
            if groups is not None:
                if codes is not None:
                    truth, predicted = codes[truth], codes[predicted]
                for item_truth, item_predicted in zip(truth, predicted):
                    for name, value in grouped_dice(item_truth, item_predicted, groups).items():
                        grouped[name].append(value)
        if scores:
            self.log(f"{prefix}/seg_dice", sum(scores) / len(scores), batch_size=1)
        if grouped:
            means = {name: sum(values) / len(values) for name, values in grouped.items()}
            self.log_dict({f"{prefix}/seg_dice_{name}": value for name, value in means.items()}, batch_size=1)
            self.log(f"{prefix}/seg_dice_grouped", sum(means.values()) / len(means), batch_size=1)

    def _class_codes(self) -> Tensor | None:
        """``(num_classes,)`` label code of every segmenter class from the data module's ``label_codes``
        (``contiguous_labels``); None when the classes are the codes."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        label_codes = getattr(datamodule, "label_codes", None)
        if label_codes is None:
            return None
        if len(label_codes) + 1 != self.segmenter.num_classes:
            raise RegframeInputError(f"the segmenter has {self.segmenter.num_classes} classes but the data module "
                                     f"renumbers {len(label_codes)} label codes (+ background)")
        return torch.tensor([0, *label_codes], device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        self._log_segmentation(batch, "val")
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        self._log_segmentation(batch, "test")
        return super().test_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["jrss"] = {"reg_steps": self.reg_steps,
                              "labelled": None if self._labelled is None else self._labelled.clone()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("jrss", {})
        self.reg_steps = state.get("reg_steps", 0)
        if state.get("labelled") is not None:
            self._labelled = state["labelled"]
