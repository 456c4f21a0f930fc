"""EMA teacher (callbacks.ema.EMATeacher on torch's AveragedModel): the update formula with and without
the decay ramp and with copied or kept buffers, restarts asked for by a TeacherUser, and the teacher's
checkpoint round trip."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from callbacks.ema import EMATeacher


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def set_student(student: nn.Module, value: float, running_mean: float) -> None:
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.fill_(value)
        student[1].running_mean.fill_(running_mean)
        student[1].num_batches_tracked.fill_(int(running_mean))


def old_update(teacher: nn.Module, student: nn.Module, d: float, buffers: str) -> None:
    """The update the callback made before it used AveragedModel (in place on the state dict)."""
    parameter_names = {name for name, _ in student.named_parameters()}
    teacher_state = teacher.state_dict()
    with torch.no_grad():
        for name, value in student.state_dict().items():
            if name in parameter_names:
                teacher_state[name].mul_(d).add_(value.detach(), alpha=1.0 - d)
            elif buffers == "copy":
                teacher_state[name].copy_(value)


@pytest.mark.parametrize("buffers", ["copy", "keep"])
@pytest.mark.parametrize("ramp,expected", [(True, [1.0, 1.5, 2.5]),       # d = 0, then 1/2, then min(0.6, 2/3)
                                           (False, [0.4, 1.04, 2.224])])  # d = 0.6 from the first update
def test_known_teacher_after_three_updates(ramp, expected, buffers):
    student = tiny_network()
    set_student(student, 0.0, 0.0)
    ema = EMATeacher(decay=0.6, ramp=ramp, buffers=buffers)
    ema.reset(student)
    for value, mean in ((1.0, 1.0), (2.0, 2.0), (4.0, 3.0)):
        set_student(student, value, mean)
        ema.update(student)
        assert not any(p.requires_grad for p in ema.teacher.parameters()) and not ema.teacher.training
    for parameter in ema.teacher.parameters():
        assert torch.allclose(parameter, torch.full_like(parameter, expected[-1]))
    kept = buffers == "keep"
    assert torch.equal(ema.teacher[1].running_mean, torch.full((2,), 0.0 if kept else 3.0))
    assert int(ema.teacher[1].num_batches_tracked) == (0 if kept else 3)
    assert ema.num_updates == 3


@pytest.mark.parametrize("buffers", ["copy", "keep"])
@pytest.mark.parametrize("ramp", [True, False])
def test_averaged_model_reproduces_the_old_update_bit_for_bit(ramp, buffers):
    student = tiny_network()
    ema = EMATeacher(decay=0.9, ramp=ramp, buffers=buffers)
    reference = copy.deepcopy(ema.reset(student))
    for n in range(3):
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.add_(torch.randn_like(parameter))
        student.train()(torch.randn(4, 2))                  # new BatchNorm statistics
        old_update(reference, student, min(0.9, 1.0 - 1.0 / (n + 1)) if ramp else 0.9, buffers)
        ema.update(student)
        for name, value in reference.state_dict().items():
            assert torch.equal(ema.teacher.state_dict()[name], value), name


class TeacherStudent(pl.LightningModule):
    """A minimal TeacherUser: asks for a restart when ``restart`` is set and records what it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.student = tiny_network()
        self.read_teacher = None
        self.restart = False

    def ema_student(self) -> nn.Module:
        return self.student

    def student_updated(self) -> bool:
        return True

    def attach_teacher(self, teacher) -> None:
        self.read_teacher = teacher

    def teacher_restart_due(self) -> bool:
        return self.restart


def test_teacher_user_is_handed_the_teacher_and_gets_restarts():
    module = TeacherStudent()
    ema = EMATeacher(decay=0.9, ramp=False)
    ema.on_fit_start(None, module)
    assert module.read_teacher() is ema.teacher
    set_student(module.student, 1.0, 1.0)
    ema.on_train_batch_end(None, module, None, None, 0)
    assert ema.num_updates == 1 and not torch.equal(ema.teacher[0].weight, module.student[0].weight)
    ema.on_train_epoch_start(None, module)
    assert ema.num_updates == 1                           # no restart asked for
    module.restart = True
    ema.on_train_epoch_start(None, module)
    assert ema.num_updates == 0 and module.read_teacher() is ema.teacher
    assert torch.equal(ema.teacher[0].weight, module.student[0].weight)


def test_a_module_without_a_student_is_refused():
    with pytest.raises(TypeError, match="ema_student"):
        EMATeacher().on_fit_start(None, pl.LightningModule())
    with pytest.raises(ValueError):
        EMATeacher(buffers="average")


def test_teacher_survives_a_checkpoint_round_trip(tmp_path):
    student = tiny_network()
    ema = EMATeacher(decay=0.9, ramp=True, buffers="keep")
    ema.reset(student)
    for value in (1.0, 2.0):
        set_student(student, value, value)
        ema.update(student)
    torch.save({"callbacks": {"EMATeacher": ema.state_dict()}}, tmp_path / "run.ckpt")
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["callbacks"]["EMATeacher"]
    module = TeacherStudent()                             # resume: the state arrives before the teacher exists
    restored = EMATeacher(decay=0.9, ramp=True, buffers="keep")
    restored.load_state_dict(state)
    restored.on_fit_start(None, module)
    assert restored.num_updates == ema.num_updates == 2
    for name, value in ema.teacher.state_dict().items():
        assert torch.equal(restored.teacher.state_dict()[name], value), name
    assert module.read_teacher() is restored.teacher
    set_student(student, 4.0, 4.0)                        # and it goes on averaging exactly like the original
    ema.update(student)
    restored.update(student)
    for name, value in ema.teacher.state_dict().items():
        assert torch.equal(restored.teacher.state_dict()[name], value), name
