"""JRSS pieces: pseudo-label screening, the student and registration objectives, BatchNorm
recalibration, stage schedule, few-shot subject choice, initialisation from checkpoints, and a few
training steps of every mode on tiny in-memory data (the EMA teacher's own tests: test_ema_teacher.py)."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.ema import EMATeacher
from regframe.errors import RegframeInputError
from regframe.estimators.obelisk_regressor import ObeliskRegressor
from regframe.losses import symmetric_kl
from regframe.methods.joint_seg_reg import JointSegRegSelfTraining
from regframe.objectives.label_supervised_registration import LabelSupervisedRegistrationLoss
from regframe.objectives.screening import screen_pseudo_labels
from regframe.objectives.segmentation import StudentLoss, inverse_sqrt_frequency_weights, weighted_cross_entropy
from regframe.segmenters import NetworkSegmenter
from regframe.segmenters.dropout import recalibrate_batchnorm
from regframe.spatial import warp
from regframe.stages import EMAStudent, TeacherUser

SHAPE = (12, 12, 12)


class TinyBlobs(pl.LightningDataModule):
    """Six subjects with a ball at different places; all ordered pairs for training, two for validation."""

    def __init__(self) -> None:
        super().__init__()
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in SHAPE], indexing="ij"))
        self.train_subjects = []
        for i in range(6):
            centre = torch.tensor([5.0 + i % 3, 6.0, 5.0 + i // 3]).view(3, 1, 1, 1)
            label = ((grid - centre).pow(2).sum(0) < 9).long()[None]
            image = label.float() * 0.8 + 0.1 + 0.05 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(i))
            self.train_subjects.append({"id": f"s{i}", "image": image, "label": label, "spacing": torch.ones(3)})
        self.train_pairs = [(f, m) for f in range(6) for m in range(6) if f != m]
        self.label_names = {1: "ball"}

    def _item(self, index: int, pair: tuple[int, int]) -> dict:
        f, m = (self.train_subjects[i] for i in pair)
        return {"fixed": f["image"], "moving": m["image"], "fixed_label": f["label"], "moving_label": m["label"],
                "spacing": torch.ones(3), "pair_index": torch.tensor(index)}

    def train_dataloader(self):
        return DataLoader([self._item(i, p) for i, p in enumerate(self.train_pairs)], batch_size=2, shuffle=True)

    def val_dataloader(self):
        return DataLoader([self._item(i, p) for i, p in enumerate(self.train_pairs[:2])], batch_size=1)


def make_module(**kwargs) -> JointSegRegSelfTraining:
    torch.manual_seed(0)
    options = dict(num_labelled=2, seg_pretrain_epochs=1, reg_pretrain_epochs=1, rounds=1,
                   reg_epochs_per_round=1, seg_epochs_per_round=1, warmup_steps=1, compute_hd95=False)
    options.update(kwargs)
    return JointSegRegSelfTraining(ObeliskRegressor(spatial_dims=3), NetworkSegmenter(2, spatial_dims=3), **options)


def make_trainer(tmp_path, epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, check_val_every_n_epoch=epochs,
                      callbacks=list(callbacks), enable_checkpointing=False)


def test_screening_drops_exactly_the_voxels_below_tau():
    # a low-confidence teacher: largest class probability per voxel 0.9, 0.55, 0.4, 0.61, 0.6 (τ = 0.6)
    probs = torch.tensor([[[0.9, 0.45, 0.4, 0.39, 0.6],
                           [0.05, 0.55, 0.35, 0.61, 0.3],
                           [0.05, 0.0, 0.25, 0.0, 0.1]]])
    onehot, valid = screen_pseudo_labels(probs, tau=0.6)
    assert valid.tolist() == [[[1.0, 0.0, 0.0, 1.0, 0.0]]]       # 0.6 is not above τ
    assert onehot[0].tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0], [0.0] * 5]
    # the arg-max classes 0 and 1 each exceed τ somewhere: a per-class screen would have kept all five voxels
    assert (probs.amax(dim=2) > 0.6).tolist() == [[True, True, False]]
    _, all_kept = screen_pseudo_labels(probs, tau=0.3)
    assert all_kept.sum() == 5


def test_weighted_cross_entropy_ignores_voxels_without_target_and_weights_classes():
    logits = torch.zeros(1, 2, 3)                        # uniform prediction: CE = log 2 per voxel
    target = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])   # third voxel has no target
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.ones(2)), log2)
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.tensor([1.0, 3.0])), 2 * log2)


def test_class_weights_follow_inverse_sqrt_frequency_or_are_uniform():
    labels = [torch.tensor([0, 0, 0, 1])]                # frequencies 3/4 and 1/4
    weights = inverse_sqrt_frequency_weights(labels, 2)
    assert torch.allclose(weights[1] / weights[0], torch.tensor(3.0).sqrt())
    assert torch.isclose(weights.mean(), torch.tensor(1.0))
    for weighting in (True, False):
        module = make_module(ce_class_weighting=weighting)
        module.trainer = pl.Trainer(logger=False)
        module.trainer.datamodule = data = TinyBlobs()
        module.setup("fit")
        chosen = [s["label"] for s in data.train_subjects if s["id"] in module.hparams["labelled_ids"]]
        expected = inverse_sqrt_frequency_weights(chosen, 2) if weighting else torch.ones(2)
        assert torch.equal(module.class_weights, expected)


def test_symmetric_kl_is_the_papers_eq5():
    # two classes, two voxels; voxel 1: p = (1/2, 1/2), q = (1/4, 3/4); voxel 2: p = q.
    # Eq. 5 per voxel: (1/C) Σ_c [p_c log(p_c/q_c) + q_c log(q_c/p_c)]
    #   = ½ [(½ − ¼) log 2 + (½ − ¾) log(2/3)] = ½ · ¼ · (log 2 + log 3/2) = log(3) / 8; mean over voxels: log(3)/16
    p = torch.tensor([[[0.5, 0.3], [0.5, 0.7]]])
    q = torch.tensor([[[0.25, 0.3], [0.75, 0.7]]])
    expected = torch.log(torch.tensor(3.0)) / 16
    assert torch.allclose(symmetric_kl(p, q), expected)
    assert torch.allclose(symmetric_kl(q, p), expected)
    assert symmetric_kl(p, p).abs() < 1e-7


def test_student_loss_known_answer_and_dice_through_registration_pairs():
    # One pair: image 0 = fixed (labelled), image 1 = warped moving (unlabelled); two classes, four voxels.
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])          # background, foreground
    logits = torch.zeros(2, 2, 4)
    logits[1] = 3.0 * (2 * target - 1)                    # the warped moving image predicts the fixed label
    targets = torch.stack([target, torch.zeros(2, 4)])
    labelled = torch.tensor([True, False])
    pseudo = torch.stack([torch.zeros(2, 4), target])
    teacher = torch.stack([torch.full((2, 4), 0.5), torch.tensor([[0.8] * 4, [0.2] * 4])])
    extra_logits, extra_targets = torch.zeros(1, 2, 4), target[None]
    terms = StudentLoss(uncertainty_weight=0.5, seg_dice_weight=2.0)(
        logits, targets, labelled, pseudo, teacher, extra_logits, extra_targets, torch.ones(2))
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(terms.ce_labelled, log2)        # uniform logits on the labelled images
    right = torch.sigmoid(torch.tensor(6.0))              # probability of the right class in image 1
    assert torch.allclose(terms.ce_pseudo, -right.log())
    student = logits[1].softmax(0)
    expected_kl = ((teacher[1] - student) * (teacher[1].log() - student.log())).mean()   # Eq. 5
    assert torch.allclose(terms.sym_kl, expected_kl)
    # the fixed label is compared with the warped moving image's prediction (foreground probabilities
    # [1-r, 1-r, r, r]), not with the fixed image's own uniform prediction (Dice loss ≈ 1/2); MONAI smoothing 1e-5
    assert torch.allclose(terms.registration_dice, 1 - (4 * right + 1e-5) / (4 + 1e-5))
    assert torch.allclose(terms.loss, terms.ce_labelled + terms.ce_pseudo + 0.5 * expected_kl
                          + 2.0 * terms.registration_dice)


def test_registration_loss_known_answer_and_warmup():
    fixed = torch.zeros(2, 1, 4, 4, 4)
    moving = fixed + 0.5                                  # MSE 0.25
    disp = torch.zeros(2, 3, 4, 4, 4)                     # identity: diffusion 0, labels unchanged
    fixed_fg = torch.zeros(4, 4, 4)
    fixed_fg[:2] = 1.0                                    # 32 voxels
    moving_fg = torch.zeros(4, 4, 4)
    moving_fg[1:3] = 1.0                                  # 32 voxels, 16 shared: Dice 1/2
    onehot = lambda fg: torch.stack([1 - fg, fg])[None].repeat(2, 1, 1, 1, 1)
    everywhere = torch.ones(2, 1, 4, 4, 4)
    fixed_valid = everywhere.clone()
    fixed_valid[1] = 0.0                                  # second pair: the fixed image has no target
    objective = LabelSupervisedRegistrationLoss(smooth_weight=0.025, smooth_weight_warmup=0.1, warmup_steps=3,
                                                dice_weight=0.2)
    terms = objective(fixed, moving, disp, onehot(fixed_fg), onehot(moving_fg), fixed_valid, everywhere, step=0)
    assert torch.allclose(terms.mse, torch.tensor(0.25)) and terms.diffusion == 0
    assert torch.allclose(terms.dice, torch.tensor(0.5), atol=1e-4)
    assert torch.allclose(terms.loss, 0.25 + 0.2 * terms.dice * 0.5)   # only half of the pairs usable
    assert [objective.smooth_weight_at(step) for step in (0, 2, 3)] == [0.1, 0.1, 0.025]
    assert objective(fixed, moving, disp, onehot(fixed_fg), onehot(moving_fg), fixed_valid, everywhere,
                     step=5).smooth_weight == 0.025
    unlabelled = objective(fixed, moving, disp, onehot(fixed_fg), onehot(moving_fg), 0 * everywhere, everywhere, step=0)
    assert torch.allclose(unlabelled.loss, torch.tensor(0.25)) and unlabelled.dice == 0


def test_registration_dice_ignores_screened_voxels():
    # the labels disagree only on slice 0 (fixed: foreground, moving: background); screened in either image,
    # that slice drops out and the remaining foreground (slice 1) matches: Dice loss 0
    fixed, moving, disp = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4)
    fixed_fg, moving_fg = torch.zeros(4, 4, 4), torch.zeros(4, 4, 4)
    fixed_fg[:2] = 1.0
    moving_fg[1] = 1.0
    onehot = lambda fg: torch.stack([1 - fg, fg])[None]
    screened = torch.ones(1, 1, 4, 4, 4)
    screened[:, :, 0] = 0.0
    objective = LabelSupervisedRegistrationLoss(dice_weight=1.0)
    everywhere = torch.ones_like(screened)
    full = objective(fixed, moving, disp, onehot(fixed_fg), onehot(moving_fg), everywhere, everywhere, step=0)
    assert torch.allclose(full.dice, torch.tensor(1 - 2 * 16 / 48), atol=1e-4)
    for fixed_valid, moving_valid in ((screened, everywhere), (everywhere, screened)):
        terms = objective(fixed, moving, disp, onehot(fixed_fg), onehot(moving_fg), fixed_valid, moving_valid, step=0)
        assert terms.dice.abs() < 1e-4


def test_batchnorm_recalibration_matches_the_data_without_dropout():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Dropout(0.5), torch.nn.BatchNorm3d(2)).eval()
    images = [torch.randn(1, 4, 4, 4) * 3.0 + 2.0 for _ in range(4)]
    recalibrate_batchnorm(network, images, batch_size=2)
    with torch.no_grad():
        features = network[0](torch.stack(images))
    assert torch.allclose(network[2].running_mean, features.mean(dim=(0, 2, 3, 4)), atol=1e-5)
    batch_vars = [features[i: i + 2].var(dim=(0, 2, 3, 4)) for i in (0, 2)]   # unbiased, per batch
    assert torch.allclose(network[2].running_var, sum(batch_vars) / 2, atol=1e-4)
    assert network[1].p == 0.5 and network[2].momentum == 0.1 and not network.training
    recalibrate_batchnorm(network, images[:3], batch_size=2)   # one batch of three, not 2 + 1
    with torch.no_grad():
        three = network[0](torch.stack(images[:3]))
    assert torch.allclose(network[2].running_mean, three.mean(dim=(0, 2, 3, 4)), atol=1e-5)


def test_stage_schedule():
    module = make_module(seg_pretrain_epochs=2, reg_pretrain_epochs=1, rounds=2, reg_epochs_per_round=5,
                         seg_epochs_per_round=1)
    stages = [module.schedule.stage_at(e).name for e in range(module.schedule.total_epochs)]
    assert module.schedule.total_epochs == 15
    # each round: registration first, then the student (the paper's order)
    assert stages == (["seg_pretrain"] * 2 + ["reg_pretrain"] + (["reg_joint"] * 5 + ["student"]) * 2)
    assert module.schedule.stage_at(40).name == "student"            # after the schedule the last stage repeats
    assert module.joint_start_epoch == 3
    no_pretraining = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0)   # stages of 0 epochs left out
    assert [s.name for s in no_pretraining.schedule.stages] == ["reg_joint", "student"]
    frozen = make_module(mode="frozen_pseudo_reg", seg_pretrain_epochs=2, reg_pretrain_epochs=1, rounds=2,
                         reg_epochs_per_round=5)      # JRSS's stages without the student: same registration steps
    assert [(s.name, s.stop - s.start) for s in frozen.schedule.stages] == [
        ("seg_pretrain", 2), ("reg_pretrain", 1), ("reg_joint", 10)]
    assert frozen.joint_start_epoch is None
    assert make_module(mode="mono_seg").schedule.stage_at(7).name == "seg_pretrain"
    assert make_module(mode="mono_reg").schedule.stage_at(7).name == "reg_pretrain"
    assert make_module(mode="mono_seg").joint_start_epoch is None


@pytest.mark.parametrize("mode", ["mono_seg", "mono_reg"])
def test_baselines_train_only_their_network(tmp_path, mode):
    module = make_module(mode=mode)
    seg0, reg0 = copy.deepcopy(module.segmenter.state_dict()), copy.deepcopy(module.estimator.state_dict())
    make_trainer(tmp_path, 1).fit(module, datamodule=TinyBlobs())
    seg_changed = any(not torch.equal(v, module.segmenter.state_dict()[k]) for k, v in seg0.items())
    reg_changed = any(not torch.equal(v, module.estimator.state_dict()[k]) for k, v in reg0.items())
    assert (seg_changed, reg_changed) == ((True, False) if mode == "mono_seg" else (False, True))
    assert len(module.hparams["labelled_ids"]) == 2


def test_labelled_subjects_follow_the_seed():
    ids = []
    for seed in (0, 0, 1):
        module = make_module(labelled_seed=seed)
        module.trainer = pl.Trainer(logger=False)
        module.trainer.datamodule = TinyBlobs()
        module.setup("fit")
        ids.append(module.hparams["labelled_ids"])
    assert ids[0] == ids[1] and len(ids[0]) == 2
    assert ids[2] != ids[0] and len(ids[2]) == 2 and set(ids[2]) <= {f"s{i}" for i in range(6)}


def test_joint_run_keeps_the_teacher_out_of_the_student_weights(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0,   # one student + one joint-reg epoch
                         final_segmenter="student")
    assert isinstance(module, EMAStudent) and isinstance(module, TeacherUser)
    ema = EMATeacher(decay=0.99)
    trainer = make_trainer(tmp_path, module.schedule.total_epochs, [ema])
    trainer.fit(module, datamodule=TinyBlobs())
    assert ema.num_updates == 2                          # one student epoch of two batches
    assert module.teacher() is ema.teacher
    assert {"val/seg_dice", "val/dice"} <= set(trainer.callback_metrics)
    path = tmp_path / "jrss.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any("teacher" in k for k in checkpoint["state_dict"])
    for name, value in module.segmenter.state_dict().items():   # student weights untouched by the teacher
        assert torch.equal(checkpoint["state_dict"][f"segmenter.{name}"], value)
    assert any(not torch.equal(v, module.segmenter.state_dict()[k]) for k, v in ema.teacher.state_dict().items())


def test_joint_mode_without_an_ema_teacher_fails_before_training(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0)
    with pytest.raises(RegframeInputError, match="EMATeacher"):
        make_trainer(tmp_path, 2).fit(module, datamodule=TinyBlobs())


def test_networks_initialised_from_a_checkpoint(tmp_path):
    module = make_module(mode="mono_seg")
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=TinyBlobs())
    trainer.save_checkpoint(tmp_path / "mono_seg.ckpt")
    initialised = make_module(segmenter_init=str(tmp_path / "mono_seg.ckpt"))
    for name, value in module.segmenter.state_dict().items():
        assert torch.equal(initialised.segmenter.state_dict()[name], value)
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(RegframeInputError, match="no 'estimator"):
        make_module(estimator_init=str(tmp_path / "other.ckpt"))


def test_teacher_as_final_segmenter_with_recalibrated_statistics(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0, bn_recalibration=True,
                         final_segmenter="teacher")
    ema = EMATeacher(decay=0.99, ramp=False, buffers="keep")
    start = copy.deepcopy(module.segmenter.state_dict())
    make_trainer(tmp_path, module.schedule.total_epochs, [ema]).fit(module, datamodule=TinyBlobs())
    for name, value in ema.teacher.state_dict().items():       # the segmenter is now the teacher
        assert torch.equal(module.segmenter.state_dict()[name], value)
    assert not torch.equal(ema.teacher.state_dict()["network.enc2.0.1.running_var"],
                           start["network.enc2.0.1.running_var"])   # re-estimated after the student epoch


class StageChanges(pl.Callback):
    """Which of segmenter / estimator parameters / buffers each training epoch changed (BatchNorm
    recalibration at the end of a student epoch included: snapshots at epoch starts and at the end)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, dict[str, bool]]] = []
        self._before: tuple[str, dict] | None = None

    @staticmethod
    def _state(module: JointSegRegSelfTraining) -> dict:
        return {f"{net}_{kind}": {n: t.detach().clone() for n, t in getattr(getattr(module, net), f"named_{kind}")()}
                for net in ("segmenter", "estimator") for kind in ("parameters", "buffers")}

    def _close(self, module: JointSegRegSelfTraining) -> None:
        if self._before is not None:
            stage, before = self._before
            now = self._state(module)
            self.changes.append((stage, {part: any(not torch.equal(v, now[part][n]) for n, v in values.items())
                                         for part, values in before.items()}))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._close(pl_module)
        self._before = (pl_module.stage, self._state(pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self._close(pl_module)


def quiet_trainer(tmp_path, epochs: int, callbacks=()) -> pl.Trainer:
    """Training only (no validation), two steps per epoch."""
    return pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=0, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, callbacks=list(callbacks), enable_checkpointing=False)


def only(*trained: str) -> dict[str, bool]:
    return {f"{net}_{kind}": net in trained for net in ("segmenter", "estimator") for kind in ("parameters", "buffers")}


def test_each_stage_changes_only_its_own_network(tmp_path):
    """Parameters and BatchNorm buffers: the segmenter changes only in seg_pretrain and student epochs,
    the estimator only in registration epochs (before the fix the estimator's 33 BatchNorm buffers moved in
    student epochs). Checked after a checkpoint round trip too."""
    module = make_module(final_segmenter="student")
    changes = StageChanges()
    trainer = quiet_trainer(tmp_path, module.schedule.total_epochs, [EMATeacher(decay=0.99, ramp=False, buffers="keep"),
                                                                      changes])
    trainer.fit(module, datamodule=TinyBlobs())
    assert changes.changes == [("seg_pretrain", only("segmenter")), ("reg_pretrain", only("estimator")),
                               ("reg_joint", only("estimator")), ("student", only("segmenter"))]
    path = tmp_path / "jrss.ckpt"
    trainer.save_checkpoint(path)
    resumed = make_module(final_segmenter="student", rounds=2)    # one more round after the checkpoint
    again = StageChanges()
    quiet_trainer(tmp_path, resumed.schedule.total_epochs,
                  [EMATeacher(decay=0.99, ramp=False, buffers="keep"), again]).fit(resumed, datamodule=TinyBlobs(),
                                                                                  ckpt_path=path)
    assert resumed.reg_steps == 6                                   # 2 pre-training + 2 + 2 joint steps
    assert again.changes == [("reg_joint", only("estimator")), ("student", only("segmenter"))]


def test_frozen_pseudo_reg_trains_registration_on_a_teacher_that_never_changes(tmp_path):
    module = make_module(mode="frozen_pseudo_reg", rounds=2, tau=0.5)   # τ = ½ keeps almost every voxel (2 classes)
    changes = StageChanges()
    trainer = quiet_trainer(tmp_path, module.schedule.total_epochs, [changes])
    trainer.fit(module, datamodule=TinyBlobs())
    assert module.teacher() is module.segmenter
    assert changes.changes == [("seg_pretrain", only("segmenter")), ("reg_pretrain", only("estimator")),
                               ("reg_joint", only("estimator")), ("reg_joint", only("estimator"))]
    assert module.reg_steps == 2 + 2 * 2                            # as many registration steps as JRSS
    assert 0.0 < float(trainer.callback_metrics["train/pseudo_kept"]) <= 1.0   # the pseudo labels are used


class Shift(torch.nn.Module):
    """A stand-in estimator: the same displacement of 1.5 voxels along the first axis everywhere."""

    def forward(self, fixed, moving):
        disp = torch.zeros(fixed.shape[0], 3, *fixed.shape[2:])
        disp[:, 0] = 1.5
        return disp


class IntensityTeacher(torch.nn.Module):
    """A deterministic voxel-wise teacher: foreground logit 10·(x − ½) against background 0."""

    def forward(self, images):
        return torch.cat([torch.zeros_like(images), 10.0 * (images - 0.5)], dim=1)


@pytest.mark.parametrize("teacher_input", ["clean", "warped"])
def test_teacher_labels_the_clean_moving_image_and_its_labels_are_warped(teacher_input):
    module = make_module(teacher_input=teacher_input)
    module.estimator = Shift()
    teacher = IntensityTeacher()
    module.attach_teacher(lambda: teacher)
    fixed, moving = torch.rand(2, 1, *SHAPE, generator=torch.Generator().manual_seed(0)).split(1)
    images, probs, disp = module._student_inputs({"fixed": fixed, "moving": moving})
    moving_warped = warp(moving, disp)
    assert torch.equal(images, torch.cat([fixed, moving_warped]))     # the student always sees the warped image
    assert torch.allclose(probs[:1], teacher(fixed).softmax(1))
    clean = warp(teacher(moving).softmax(1), disp)
    noisy = teacher(moving_warped).softmax(1)
    assert not torch.allclose(clean, noisy, atol=1e-3)
    assert torch.allclose(probs[1:], clean if teacher_input == "clean" else noisy)


class RecordSmoothWeight(pl.Callback):
    """The diffusion weight of every registration step."""

    def __init__(self) -> None:
        self.weights: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.stage in ("reg_pretrain", "reg_joint"):
            self.weights.append(float(trainer.callback_metrics["train/smooth_weight"]))


def test_smooth_weight_warmup_is_the_same_for_mono_reg_and_jrss(tmp_path):
    """Warm-up over registration steps only (student steps do not count), never restarted: JRSS (2 pre-training
    + 2 × 2 joint steps) and Mono-Reg (6 steps) get the same weights, and a run initialised from a
    checkpoint's estimator goes on with its step count."""
    warmup = {"warmup_steps": 3, "smooth_weight": 0.025, "smooth_weight_warmup": 0.1}
    expected = [0.1, 0.1, 0.1, 0.025, 0.025, 0.025]
    jrss, mono_reg = make_module(rounds=2, **warmup), make_module(mode="mono_reg", reg_pretrain_epochs=3, **warmup)
    for module, callbacks in ((jrss, [EMATeacher(decay=0.99, ramp=False, buffers="keep")]), (mono_reg, [])):
        record = RecordSmoothWeight()
        trainer = quiet_trainer(tmp_path, module.schedule.total_epochs, [*callbacks, record])
        trainer.fit(module, datamodule=TinyBlobs())
        assert record.weights == pytest.approx(expected)
    mono_reg_short = make_module(mode="mono_reg", reg_pretrain_epochs=1, **warmup)
    trainer = quiet_trainer(tmp_path, 1)
    trainer.fit(mono_reg_short, datamodule=TinyBlobs())
    trainer.save_checkpoint(tmp_path / "mono_reg.ckpt")
    continued = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0, rounds=2,
                            estimator_init=str(tmp_path / "mono_reg.ckpt"), **warmup)
    assert continued.reg_steps == 2
    record = RecordSmoothWeight()
    quiet_trainer(tmp_path, continued.schedule.total_epochs,
                  [EMATeacher(decay=0.99, ramp=False, buffers="keep"), record]).fit(continued, datamodule=TinyBlobs())
    assert record.weights == pytest.approx(expected[2:])


class RecordLosses(pl.Callback):
    """Every ``train/*`` value logged at every step, with the stage."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, dict[str, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append((pl_module.stage, {k: float(v) for k, v in trainer.callback_metrics.items()
                                             if k.startswith("train/")}))


def test_labels_of_unlabelled_subjects_are_never_read(tmp_path):
    """Garbage labels on the unlabelled training subjects leave every training loss of every stage unchanged."""
    runs = []
    for corrupt in (False, True):
        data = TinyBlobs()
        labelled = {"s0", "s3"}
        for i, subject in enumerate(data.train_subjects):
            if corrupt and subject["id"] not in labelled:
                subject["label"] = torch.randint(0, 2, subject["label"].shape, generator=torch.Generator().manual_seed(i))
        module = make_module(labelled_subjects=sorted(labelled), tau=0.5)   # pseudo labels on almost every voxel
        record = RecordLosses()
        pl.seed_everything(0)
        quiet_trainer(tmp_path, module.schedule.total_epochs,
                      [EMATeacher(decay=0.99, ramp=False, buffers="keep"), record]).fit(module, datamodule=data)
        runs.append(record.steps)
    assert [stage for stage, _ in runs[0]] == ["seg_pretrain"] * 2 + ["reg_pretrain"] * 2 + ["reg_joint"] * 2 + ["student"] * 2
    assert {"train/ce_pseudo", "train/reg_dice_loss", "train/sym_kl"} <= set(runs[0][-1][1])
    assert runs[0][-1][1]["train/pseudo_kept"] > 0.5 and runs[0][-1][1]["train/ce_pseudo"] > 0
    assert runs[0] == runs[1]


class FixedPrediction(torch.nn.Module):
    """A segmenter that predicts one given class map for every input."""

    def __init__(self, classes: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.classes, self.num_classes = classes, num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(self.classes, self.num_classes).movedim(-1, 0).float()
        return onehot[None].expand(image.shape[0], -1, *self.classes.shape)


def test_grouped_segmentation_dice_maps_classes_back_to_codes(monkeypatch):
    # classes 1..4 stand for LONI codes 21, 22 (frontal) and 161, 162 (hippocampus)
    truth = torch.zeros(6, 6, 6, dtype=torch.long)
    truth[:3, :3], truth[:3, 3:], truth[3:, :2] = 1, 2, 3
    predicted = truth.clone()
    predicted[truth == 1], predicted[truth == 2] = 2, 1   # left/right swapped: structures 0, region 1
    predicted[3:, :2] = 0
    predicted[3:, :1] = 4                                 # hippocampus half found, as the other side
    module = make_module(label_groups="lpba40")
    module.segmenter = FixedPrediction(predicted, num_classes=5)
    module._trainer = type("T", (), {"datamodule": type("D", (), {"label_codes": [21, 22, 161, 162]})()})()
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    monkeypatch.setattr(module, "log_dict", lambda values, **kw: logged.update(values))
    batch = {"fixed": torch.zeros(1, 1, 6, 6, 6), "fixed_label": truth[None, None]}
    module._log_segmentation(batch, "test")
    hippocampus = 2 * 36 / (72 + 36)
    assert logged["test/seg_dice"] == pytest.approx(0.0)
    assert logged["test/seg_dice_frontal"] == pytest.approx(1.0)
    assert logged["test/seg_dice_hippocampus"] == pytest.approx(hippocampus)
    assert logged["test/seg_dice_grouped"] == pytest.approx((1.0 + hippocampus) / 2)
    with pytest.raises(RegframeInputError, match="label groups 'brain' unknown"):
        make_module(label_groups="brain")


def test_final_checkpoint_holds_the_teacher_as_segmenter(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0, final_segmenter="teacher")
    ema = EMATeacher(decay=0.99, ramp=False, buffers="keep")
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = pl.Trainer(max_epochs=module.schedule.total_epochs, limit_train_batches=2, limit_val_batches=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[ema, saver])
    trainer.fit(module, datamodule=TinyBlobs())
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    teacher = ema.teacher.state_dict()
    assert not all(torch.equal(saved[f"segmenter.{k}"], v) for k, v in make_module().segmenter.state_dict().items())
    for name, value in teacher.items():
        assert torch.equal(saved[f"segmenter.{name}"], value)


@pytest.mark.parametrize("background, expected_loss", [(False, 1.0 - 2 * 4 / (4 + 8)), (True, 1.0 - (0.0 + 2 * 4 / 12) / 2)])
def test_mono_seg_dice_counts_the_background_only_when_asked(monkeypatch, background, expected_loss):
    # truth: 4 background and 4 class-1 voxels; the segmenter floods all 8 with class 1
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]).reshape(2, 2, 2)
    module = make_module(seg_dice_background=background)
    module.segmenter = FixedPrediction(torch.ones(2, 2, 2, dtype=torch.long), num_classes=2)
    onehot = torch.nn.functional.one_hot(truth, 2).movedim(-1, 0)[None].float()
    monkeypatch.setattr(module, "_labelled_images", lambda: (torch.zeros(1, 1, 2, 2, 2), onehot))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    scaled = module.segmenter.forward
    monkeypatch.setattr(module.segmenter, "forward", lambda image: 100.0 * scaled(image))  # one-hot probabilities
    assert float(module._seg_pretrain_loss()) == pytest.approx(expected_loss, abs=1e-4)


def test_mono_seg_cross_entropy_term_scores_the_flooded_background(monkeypatch):
    # the flood of the test above with logits 2·one-hot (class-1 probability σ(2) everywhere), class weights 2, ½
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]).reshape(2, 2, 2)
    module = make_module(seg_ce_weight=0.5)
    module.class_weights = torch.tensor([2.0, 0.5])
    module.segmenter = FixedPrediction(torch.ones(2, 2, 2, dtype=torch.long), num_classes=2)
    onehot = torch.nn.functional.one_hot(truth, 2).movedim(-1, 0)[None].float()
    monkeypatch.setattr(module, "_labelled_images", lambda: (torch.zeros(1, 1, 2, 2, 2), onehot))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    scaled = module.segmenter.forward
    monkeypatch.setattr(module.segmenter, "forward", lambda image: 2.0 * scaled(image))
    p = 1 / (1 + math.exp(-2.0))
    dice = 1.0 - 2 * 4 * p / (8 * p + 4)
    cross_entropy = (4 * 2.0 * -math.log(1 - p) + 4 * 0.5 * -math.log(p)) / 8
    assert float(module._seg_pretrain_loss()) == pytest.approx(dice + 0.5 * cross_entropy, abs=1e-4)
    with pytest.raises(RegframeInputError, match="seg_ce_weight must be >= 0"):
        make_module(seg_ce_weight=-1.0)


def test_segmentation_dice_is_per_image_over_the_classes_each_truth_holds(monkeypatch):
    predicted = torch.ones(4, 4, 4, dtype=torch.long)
    predicted[:, :, 2:] = 2                                  # left half class 1, right half class 2
    truth = torch.stack([predicted, torch.ones_like(predicted)])[:, None]   # image 2: class 1 everywhere
    module = make_module()
    module.segmenter = FixedPrediction(predicted, num_classes=3)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    module._log_segmentation({"fixed": torch.zeros(2, 1, 4, 4, 4), "fixed_label": truth}, "val")
    # image 1: classes 1 and 2 exact; image 2: class 1 Dice 2·32 / (32 + 64) (pooled over the batch: 0.9)
    assert logged["val/seg_dice"] == pytest.approx((1.0 + 1.0 + 2 / 3) / 3)
