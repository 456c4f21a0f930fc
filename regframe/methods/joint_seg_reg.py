"""JRSS: joint few-shot segmentation and registration self-training (Shi et al., 2023).

One LightningModule trains a segmenter ``ψ_s`` and a registration estimator ``ψ_r`` in stages that are
a pure function of the epoch (so a resumed run resumes its stage):

1. ``seg_pretrain`` – ``ψ_s`` on the N labelled subjects with soft Dice (the Mono-Seg baseline).
2. ``reg_pretrain`` – ``ψ_r`` with MSE + λ_r·diffusion + λ_d·soft Dice on true labels where both
   subjects are labelled (the Mono-Reg baseline).
3. ``rounds`` × (``seg_epochs_per_round`` of ``student`` then ``reg_epochs_per_round`` of ``reg_joint``):
   the student (dropout ``student_dropout``) learns from true labels and from the EMA teacher's
   screened pseudo labels on unlabelled images (weighted CE + λ_u·symmetric KL to the teacher), with
   unlabelled moving images warped by ``ψ_r`` as augmentation and a Dice term through registration;
   ``ψ_r`` learns with Dice on true or pseudo labels (λ_d where present, else unsupervised).

``mode="mono_seg"`` / ``"mono_reg"`` run only stage 1 / 2 for all epochs (the baselines).
Teacher: the Mono-Seg segmenter at the start of stage 3, then ``EMATeacher(ramp=False, buffers="keep")``
(decay 0.99). ``bn_recalibration`` re-estimates the BatchNorm statistics of student and teacher after every
student epoch without dropout: statistics copied from a student trained with dropout made the teacher's
pseudo labels shrink epoch after epoch on the prostate. ``final_segmenter="teacher"`` ends training with
the teacher's weights in ``segmenter`` (mean-teacher practice; chosen on prostate validation subjects).
Screening is class-level per image (class c of an image is kept if its maximum probability exceeds τ);
voxels whose arg-max class was dropped carry no target.
The teacher is held by ``callbacks.ema.EMATeacher`` (required for ``mode="joint"``).
Which subjects are labelled: ``num_labelled`` drawn with ``labelled_seed`` from the data module's
``train_subjects`` (or listed in ``labelled_subjects``); the chosen ids are written to ``hparams``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.losses import diffusion, mse, soft_dice, symmetric_kl
from regframe.methods.base import RegistrationModule
from regframe.segmenters.base import Segmenter
from regframe.spatial import warp

Stage = Literal["seg_pretrain", "reg_pretrain", "student", "reg_joint"]


def screen_pseudo_labels(probs: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Hard one-hot pseudo labels from teacher probabilities ``(B, K, *S)``, keeping class ``c`` of an
    image only if ``max_x P^c(x) > tau``. Returns ``(onehot (B, K, *S) float, kept (B, K) bool)``; voxels
    whose arg-max class was dropped have an all-zero one-hot vector (ignored by the losses)."""
    num_classes = probs.shape[1]
    kept = probs.flatten(2).amax(dim=2) > tau
    onehot = F.one_hot(probs.argmax(dim=1), num_classes).movedim(-1, 1).to(probs.dtype)
    return onehot * kept.view(*kept.shape, *([1] * (probs.dim() - 2))).to(probs.dtype), kept


def weighted_cross_entropy(logits: Tensor, target_onehot: Tensor, class_weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy averaged over voxels that have a target (one-hot sum > 0)."""
    log_probs = F.log_softmax(logits, dim=1)
    weights = class_weights.view(1, -1, *([1] * (logits.dim() - 2)))
    per_voxel = -(target_onehot * weights * log_probs).sum(dim=1)
    valid = target_onehot.sum(dim=1) > 0
    return per_voxel[valid].mean() if valid.any() else logits.sum() * 0.0


def set_dropout(module: nn.Module, p: float) -> None:
    """Set the rate of every ``nn.Dropout*`` layer in ``module`` (the noisy-student switch)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            layer.p = p


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, images: list[Tensor], batch_size: int = 2) -> None:
    """Re-estimate every BatchNorm layer's running statistics of ``network`` as the plain average of
    batch statistics over ``images`` (each ``(1, *S)``; a last batch of one joins the one before), with
    dropout off (:func:`torch.optim.swa_utils.update_bn`, which restores momenta and the train/eval
    mode; the dropout rates are restored here). Statistics taken while training with dropout describe
    a different (noisier) network than the one used in eval mode (variance shift); this makes them match."""
    if not images:
        return
    dropouts = {m: m.p for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    set_dropout(network, 0.0)
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] == 1:
        starts.pop()                                           # no batch of one (BatchNorm needs two values)
    batches = (torch.stack(images[start:end]).float() for start, end in zip(starts, starts[1:] + [len(images)]))
    update_bn(batches, network, device=next(network.parameters()).device)
    for layer, rate in dropouts.items():
        layer.p = rate


class JointSegRegSelfTraining(RegistrationModule):
    """JRSS and its Mono-Seg / Mono-Reg baselines. Epoch counts are in Lightning epochs (use the
    trainer's ``limit_train_batches`` to size them); ``max_epochs`` should cover ``total_epochs``."""

    def __init__(self, estimator: DisplacementEstimator, segmenter: Segmenter,
                 mode: Literal["joint", "mono_seg", "mono_reg"] = "joint",
                 num_labelled: int | None = 5, labelled_seed: int = 0, labelled_subjects: list[str] | None = None,
                 seg_pretrain_epochs: int = 10, reg_pretrain_epochs: int = 10, rounds: int = 3,
                 reg_epochs_per_round: int = 5, seg_epochs_per_round: int = 1,
                 tau: float = 0.6, lambda_u: float = 0.5, lambda_d: float = 0.1, lambda_d_seg: float = 1.0,
                 lambda_r: float = 0.025, lambda_r_warmup: float = 0.1, warmup_steps: int = 300,
                 student_dropout: float = 0.5, seg_batch_size: int = 2, ce_class_weighting: bool = True,
                 bn_recalibration: bool = True, final_segmenter: Literal["student", "teacher"] = "teacher",
                 seg_lr: float = 1e-3, seg_weight_decay: float = 1e-4, reg_lr: float = 4e-4, lr_decay: float = 0.99,
                 segmenter_init: str | None = None, estimator_init: str | None = None,
                 label_warp: str = "nearest", compute_hd95: bool = True) -> None:
        super().__init__(estimator=estimator, label_warp=label_warp, compute_hd95=compute_hd95)
        self.segmenter = segmenter
        self.automatic_optimization = False
        self.reg_steps = 0
        self._student_updated = False
        self._labelled: Tensor | None = None
        self._class_weights: Tensor | None = None
        if segmenter_init:
            self._load_part(segmenter_init, "segmenter")
        if estimator_init:
            self._load_part(estimator_init, "estimator")

    # ---- schedule -------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        h = self.hparams
        if h.mode == "mono_seg":
            return h.seg_pretrain_epochs
        if h.mode == "mono_reg":
            return h.reg_pretrain_epochs
        return (h.seg_pretrain_epochs + h.reg_pretrain_epochs
                + h.rounds * (h.seg_epochs_per_round + h.reg_epochs_per_round))

    def stage_of_epoch(self, epoch: int) -> Stage:
        """The training stage of ``epoch`` (after the schedule ends the last stage repeats)."""
        h = self.hparams
        if h.mode == "mono_seg":
            return "seg_pretrain"
        if h.mode == "mono_reg":
            return "reg_pretrain"
        if epoch < h.seg_pretrain_epochs:
            return "seg_pretrain"
        epoch -= h.seg_pretrain_epochs
        if epoch < h.reg_pretrain_epochs:
            return "reg_pretrain"
        epoch -= h.reg_pretrain_epochs
        round_length = h.seg_epochs_per_round + h.reg_epochs_per_round
        epoch = min(epoch, h.rounds * round_length - 1) % round_length
        return "student" if epoch < h.seg_epochs_per_round else "reg_joint"

    @property
    def stage(self) -> Stage:
        return self.stage_of_epoch(self.current_epoch)

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
        self._class_weights = self._inverse_sqrt_frequency([subjects[i]["label"] for i in chosen])

    def _inverse_sqrt_frequency(self, labels: list[Tensor]) -> Tensor:
        """Class weights ``∝ frequency^-½`` over the labelled subjects, mean 1 (the paper's pixel-wise
        weighted CE); all ones with ``ce_class_weighting=False``."""
        k = self.segmenter.num_classes
        if not self.hparams.ce_class_weighting:
            return torch.ones(k)
        counts = sum(torch.bincount(lab.flatten().long(), minlength=k)[:k].double() for lab in labels)
        weights = (counts.clamp_min(1) / counts.sum()).pow(-0.5)
        return (weights / weights.mean()).float()

    def _load_part(self, checkpoint_path: str, prefix: str) -> None:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["state_dict"]
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if not part:
            raise RegframeInputError(f"{checkpoint_path}: no '{prefix}.*' weights in the checkpoint")
        getattr(self, prefix).load_state_dict(part)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        reg_opt = torch.optim.Adam(self.estimator.parameters(), lr=h.reg_lr)
        seg_opt = torch.optim.Adam(self.segmenter.parameters(), lr=h.seg_lr, weight_decay=h.seg_weight_decay)
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=h.lr_decay) for o in (reg_opt, seg_opt)]
        return [reg_opt, seg_opt], schedulers

    # ---- EMA-teacher protocol (callbacks.ema.EMATeacher) ----------------------------------
    def ema_student(self) -> nn.Module:
        return self.segmenter

    def student_updated(self) -> bool:
        return self._student_updated

    def _ema(self):
        from callbacks.ema import EMATeacher  # top-level package; imported lazily to keep regframe standalone

        found = [c for c in self.trainer.callbacks if isinstance(c, EMATeacher)]
        if not found:
            raise RegframeInputError("trainer.callbacks: JRSS (mode='joint') needs a callbacks.ema.EMATeacher")
        return found[0]

    # ---- training -------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        stage = self.stage
        set_dropout(self.segmenter, self.hparams.student_dropout if stage == "student" else 0.0)
        starts_joint = self.hparams.mode == "joint" and self.current_epoch == (
            self.hparams.seg_pretrain_epochs + self.hparams.reg_pretrain_epochs)
        if starts_joint:  # step 1 -> 2: the pre-trained segmenter becomes the first teacher
            self._ema().reset(self.segmenter).to(self.device)
        self.log("stage", float(["seg_pretrain", "reg_pretrain", "student", "reg_joint"].index(stage)))

    def on_train_epoch_end(self) -> None:
        if self.stage == "student" and self.hparams.bn_recalibration:
            images = [s["image"] for s in self.trainer.datamodule.train_subjects]
            recalibrate_batchnorm(self.segmenter, images, self.hparams.seg_batch_size)
            recalibrate_batchnorm(self._ema().teacher, images, self.hparams.seg_batch_size)
        reg_sched, seg_sched = self.lr_schedulers()
        (seg_sched if self.stage in ("seg_pretrain", "student") else reg_sched).step()

    def on_fit_end(self) -> None:
        """``final_segmenter="teacher"``: the EMA teacher's weights become the segmenter (mean-teacher
        practice), so evaluation after fitting and checkpoints saved after it use the teacher. Checkpoints
        written during training keep the student in ``segmenter`` and the teacher in the
        :class:`callbacks.ema.EMATeacher` state."""
        if self.hparams.mode == "joint" and self.hparams.final_segmenter == "teacher":
            self.segmenter.load_state_dict(self._ema().teacher.state_dict())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self._student_updated = False
        stage = self.stage
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
        probs = self.segmenter(images).softmax(dim=1)
        loss = soft_dice(probs, onehot)
        self.log("train/seg_dice_loss", loss.detach(), batch_size=images.shape[0])
        return loss

    def _teacher_probs(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self._ema().teacher(images).softmax(dim=1)

    def _student_loss(self, batch: dict[str, Any]) -> Tensor:
        """Weighted CE on true and screened pseudo labels + λ_u·symKL(teacher, student)
        + λ_d_seg·Dice through registration; unlabelled inputs are registration-warped moving images."""
        h = self.hparams
        fixed, moving = batch["fixed"], batch["moving"]
        fixed_lab, moving_lab = self._pair_labelled(batch)
        with torch.no_grad():
            disp = self.estimator(fixed, moving)
            moving_warped = warp(moving, disp)
        # Targets for [fixed, warped moving]: true labels where labelled, screened teacher labels elsewhere.
        images = torch.cat([fixed, moving_warped])
        labelled = torch.cat([fixed_lab, moving_lab])
        teacher = self._teacher_probs(images)
        pseudo, kept = screen_pseudo_labels(teacher, h.tau)
        true = torch.zeros_like(pseudo)
        if fixed_lab.any():
            true[: len(fixed)] = self._onehot(batch["fixed_label"])
        if moving_lab.any():
            true[len(fixed):] = warp(self._onehot(batch["moving_label"]), disp)
        weights = self._class_weights.to(self.device)

        lab_images, lab_onehot = self._labelled_images()
        logits = self.segmenter(torch.cat([images, lab_images]))
        logits_pair, logits_lab = logits[: len(images)], logits[len(images):]
        probs_pair = logits_pair.softmax(dim=1)

        ce_labelled = weighted_cross_entropy(torch.cat([logits_lab, logits_pair[labelled]]),
                                             torch.cat([lab_onehot, true[labelled]]), weights)
        unlabelled = ~labelled
        ce_pseudo = (weighted_cross_entropy(logits_pair[unlabelled], pseudo[unlabelled], weights)
                     if unlabelled.any() else ce_labelled * 0.0)
        kl = (symmetric_kl(teacher[unlabelled], probs_pair[unlabelled])
              if unlabelled.any() else ce_labelled * 0.0)
        # Dice through registration: the warped moving image must segment like the labelled fixed one,
        # and the fixed image like the warped moving label.
        dice_terms = [soft_dice(probs_pair[len(fixed) + i: len(fixed) + i + 1], true[i: i + 1])
                      for i in range(len(fixed)) if fixed_lab[i]]
        dice_terms += [soft_dice(probs_pair[i: i + 1], true[len(fixed) + i: len(fixed) + i + 1])
                       for i in range(len(fixed)) if moving_lab[i]]
        weak_dice = torch.stack(dice_terms).mean() if dice_terms else ce_labelled * 0.0
        loss = ce_labelled + ce_pseudo + h.lambda_u * kl + h.lambda_d_seg * weak_dice
        size = images.shape[0]
        self.log_dict({"train/ce_labelled": ce_labelled.detach(), "train/ce_pseudo": ce_pseudo.detach(),
                       "train/sym_kl": kl.detach(), "train/weak_dice_seg": weak_dice.detach(),
                       "train/pseudo_kept": kept[unlabelled, 1:].float().mean() if unlabelled.any() else 0.0},
                      batch_size=size)
        return loss

    def current_lambda_r(self) -> float:
        h = self.hparams
        return h.lambda_r_warmup if self.reg_steps < h.warmup_steps else h.lambda_r

    def _registration_loss(self, batch: dict[str, Any], use_pseudo: bool) -> Tensor:
        """MSE + λ_r·diffusion + λ_d·soft Dice(warped moving labels, fixed labels) where both subjects have
        (pseudo) labels; pairs without them train unsupervised."""
        h = self.hparams
        fixed, moving = batch["fixed"], batch["moving"]
        disp = self.estimator(fixed, moving)
        image_loss = mse(warp(moving, disp), fixed)
        smooth = diffusion(disp)
        loss = image_loss + self.current_lambda_r() * smooth
        fixed_lab, moving_lab = self._pair_labelled(batch)
        fixed_target, fixed_kept = self._labels_or_pseudo(batch.get("fixed_label"), fixed, fixed_lab, use_pseudo)
        moving_target, moving_kept = self._labels_or_pseudo(batch.get("moving_label"), moving, moving_lab,
                                                            use_pseudo)
        kept = fixed_kept & moving_kept                                  # (B, K): classes usable in both
        usable = kept[:, 1:].any(dim=1)
        dice = loss * 0.0
        if usable.any():
            mask = kept.float().view(*kept.shape, *([1] * (fixed.dim() - 2)))
            warped_labels = warp(moving_target * mask, disp)
            dice = soft_dice(warped_labels[usable], (fixed_target * mask)[usable])
            loss = loss + h.lambda_d * dice * usable.float().mean()
        self.log_dict({"train/reg_mse": image_loss.detach(), "train/reg_diffusion": smooth.detach(),
                       "train/reg_dice_loss": dice.detach(), "train/lambda_r": self.current_lambda_r()},
                      batch_size=fixed.shape[0])
        return loss

    def _labels_or_pseudo(self, label: Tensor | None, image: Tensor, labelled: Tensor,
                          use_pseudo: bool) -> tuple[Tensor, Tensor]:
        """One-hot targets ``(B, K, *S)`` and kept classes ``(B, K)``: true labels where ``labelled``,
        screened teacher pseudo labels elsewhere (if ``use_pseudo``), else nothing kept."""
        k = self.segmenter.num_classes
        onehot = image.new_zeros(image.shape[0], k, *image.shape[2:])
        kept = torch.zeros(image.shape[0], k, dtype=torch.bool, device=image.device)
        if labelled.any():
            onehot[labelled] = self._onehot(label[labelled])
            kept[labelled] = True
        if use_pseudo and (~labelled).any():
            pseudo, pseudo_kept = screen_pseudo_labels(self._teacher_probs(image[~labelled]), self.hparams.tau)
            onehot[~labelled] = pseudo
            kept[~labelled] = pseudo_kept
        return onehot, kept

    # ---- evaluation -----------------------------------------------------------------------
    def _log_segmentation(self, batch: dict[str, Any], prefix: str) -> None:
        """Mean foreground Dice of the segmenter on the fixed and the moving image (``{prefix}/seg_dice``)."""
        scores = []
        for key in ("fixed", "moving"):
            if f"{key}_label" not in batch:
                continue
            predicted = self.segmenter(batch[key]).argmax(dim=1)
            truth = batch[f"{key}_label"][:, 0]
            for c in range(1, self.segmenter.num_classes):
                if (truth == c).any():
                    p, t = predicted == c, truth == c
                    scores.append(2.0 * (p & t).sum().item() / (p.sum() + t.sum()).item())
        if scores:
            self.log(f"{prefix}/seg_dice", sum(scores) / len(scores), batch_size=1)

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
