"""JRSS pieces: pseudo-label screening, KL term, EMA teacher math and checkpoints, stage schedule,
few-shot subject choice, and a few training steps of every mode on tiny in-memory data."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.ema import EMATeacher
from regframe.estimators.obelisk_regressor import ObeliskRegressor
from regframe.losses import symmetric_kl
from regframe.methods.joint_seg_reg import (JointSegRegSelfTraining, recalibrate_batchnorm, screen_pseudo_labels,
                                           weighted_cross_entropy)
from regframe.segmenters import NetworkSegmenter

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


def test_screening_keeps_only_confident_classes():
    probs = torch.zeros(1, 3, 4)
    probs[0, 0] = torch.tensor([0.9, 0.2, 0.2, 0.5])
    probs[0, 1] = torch.tensor([0.05, 0.8, 0.3, 0.2])   # max 0.8 > τ: kept
    probs[0, 2] = torch.tensor([0.05, 0.0, 0.5, 0.3])   # max 0.5 ≤ τ: dropped
    onehot, kept = screen_pseudo_labels(probs, tau=0.6)
    assert kept.tolist() == [[True, True, False]]
    assert onehot[0].argmax(0)[:2].tolist() == [0, 1]
    assert onehot[0, :, 2].sum() == 0  # arg max is the dropped class 2: voxel has no target
    assert onehot[0, 2].sum() == 0 and onehot.sum() == 3


def test_weighted_cross_entropy_ignores_voxels_without_target_and_weights_classes():
    logits = torch.zeros(1, 2, 3)                        # uniform prediction: CE = log 2 per voxel
    target = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])   # third voxel has no target
    log2 = torch.log(torch.tensor(2.0))
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.ones(2)), log2)
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.tensor([1.0, 3.0])), 2 * log2)


def test_class_weights_follow_inverse_sqrt_frequency_or_are_uniform():
    labels = [torch.tensor([0, 0, 0, 1])]                # frequencies 3/4 and 1/4
    weights = make_module()._inverse_sqrt_frequency(labels)
    assert torch.allclose(weights[1] / weights[0], torch.tensor(3.0).sqrt()) and torch.isclose(weights.mean(), torch.tensor(1.0))
    assert torch.equal(make_module(ce_class_weighting=False)._inverse_sqrt_frequency(labels), torch.ones(2))


def test_symmetric_kl_zero_for_identical_and_positive_otherwise():
    p = torch.softmax(torch.randn(2, 3, 5, 5), dim=1)
    assert symmetric_kl(p, p).abs() < 1e-7
    assert symmetric_kl(p, torch.softmax(torch.randn(2, 3, 5, 5), dim=1)) > 0


def test_ema_update_math_with_ramped_decay():
    student = torch.nn.Linear(2, 1)
    ema = EMATeacher(decay=0.9)
    ema.reset(student)
    with torch.no_grad():
        student.weight.fill_(1.0)
    ema.update(student)                                  # n = 0: decay 0, teacher = student
    assert torch.equal(ema.teacher.weight, student.weight)
    before = ema.teacher.weight.clone()
    with torch.no_grad():
        student.weight.fill_(3.0)
    ema.update(student)                                  # n = 1: decay min(0.9, 1/2) = 0.5
    assert torch.allclose(ema.teacher.weight, 0.5 * before + 0.5 * 3.0)
    ema.num_updates = 50
    before = ema.teacher.weight.clone()
    ema.update(student)                                  # ramp saturated: decay 0.9
    assert torch.allclose(ema.teacher.weight, 0.9 * before + 0.1 * 3.0)
    assert not any(p.requires_grad for p in ema.teacher.parameters())


def test_ema_without_ramp_keeps_the_teacher_and_its_buffers():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMATeacher(decay=0.9, ramp=False, buffers="keep")
    ema.reset(student)
    with torch.no_grad():
        student[0].weight.fill_(1.0)
        student[1].running_mean.fill_(5.0)
    before = ema.teacher[0].weight.clone()
    ema.update(student)                                  # first update already uses decay 0.9
    assert torch.allclose(ema.teacher[0].weight, 0.9 * before + 0.1)
    assert torch.equal(ema.teacher[1].running_mean, torch.zeros(2))   # teacher's own statistics kept
    copying = EMATeacher(decay=0.9, ramp=False)
    copying.reset(student)
    student[1].running_mean.fill_(7.0)
    copying.update(student)
    assert torch.equal(copying.teacher[1].running_mean, torch.full((2,), 7.0))
    with pytest.raises(ValueError):
        EMATeacher(buffers="average")


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
    stages = [module.stage_of_epoch(e) for e in range(module.total_epochs)]
    assert module.total_epochs == 15
    assert stages[:4] == ["seg_pretrain", "seg_pretrain", "reg_pretrain", "student"]
    assert stages[4:9] == ["reg_joint"] * 5 and stages[9] == "student"
    assert make_module(mode="mono_seg").stage_of_epoch(7) == "seg_pretrain"
    assert make_module(mode="mono_reg").stage_of_epoch(7) == "reg_pretrain"


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


def test_joint_run_and_teacher_checkpoint_round_trip(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0,   # one student + one joint-reg epoch
                         final_segmenter="student")
    ema = EMATeacher(decay=0.99)
    trainer = make_trainer(tmp_path, module.total_epochs, [ema])
    trainer.fit(module, datamodule=TinyBlobs())
    assert ema.num_updates == 2                          # one student epoch of two batches
    assert {"val/seg_dice", "val/dice"} <= set(trainer.callback_metrics)
    path = tmp_path / "jrss.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert not any("teacher" in k for k in checkpoint["state_dict"])
    for name, value in module.segmenter.state_dict().items():   # student weights untouched by the teacher
        assert torch.equal(checkpoint["state_dict"][f"segmenter.{name}"], value)
    assert any(not torch.equal(v, module.segmenter.state_dict()[k]) for k, v in ema.teacher.state_dict().items())
    restored = EMATeacher()
    state = next(v for k, v in checkpoint["callbacks"].items() if "EMATeacher" in k)
    restored.reset(NetworkSegmenter(2, spatial_dims=3))
    restored.load_state_dict(state)
    assert restored.num_updates == ema.num_updates
    for name, value in ema.teacher.state_dict().items():
        assert torch.equal(restored.teacher.state_dict()[name], value)


def test_teacher_as_final_segmenter_with_recalibrated_statistics(tmp_path):
    module = make_module(seg_pretrain_epochs=0, reg_pretrain_epochs=0, bn_recalibration=True,
                         final_segmenter="teacher")
    ema = EMATeacher(decay=0.99, ramp=False, buffers="keep")
    start = copy.deepcopy(module.segmenter.state_dict())
    make_trainer(tmp_path, module.total_epochs, [ema]).fit(module, datamodule=TinyBlobs())
    for name, value in ema.teacher.state_dict().items():       # the segmenter is now the teacher
        assert torch.equal(module.segmenter.state_dict()[name], value)
    assert not torch.equal(ema.teacher.state_dict()["network.enc2.0.1.running_var"],
                           start["network.enc2.0.1.running_var"])   # re-estimated after the student epoch
