"""EMA teacher for self-training: the teacher is an exponential moving average of a student network,
kept in a :class:`torch.optim.swa_utils.AveragedModel`.

The teacher lives in this callback, not in the LightningModule, so the student's checkpoint weights
(``checkpoint["state_dict"]``) never contain it; the teacher's weights travel in the callback state
(``checkpoint["callbacks"]``) and are restored exactly on resume.

The module is an :class:`regframe.stages.EMAStudent` (``ema_student()``, ``student_updated()``). A
:class:`regframe.stages.TeacherUser` is also handed the teacher (``attach_teacher``) and has it restarted
from the student at the start of an epoch when ``teacher_restart_due()``. Lightning's
``WeightAveraging``/``EMAWeightAveraging`` are not used because they average the whole module and swap
the average into it for validation and into the saved ``state_dict`` — the opposite of a separate
teacher used during training.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from regframe.stages import EMAStudent, TeacherUser, require


class EMATeacher(pl.Callback):
    """``teacher ← d·teacher + (1 − d)·student`` after each student update.

    ``ramp=True``: ramped decay ``d = min(decay, 1 − 1/(n + 1))`` (``n`` = updates since the last reset:
    the first update copies the student), for a teacher that starts from an untrained copy.
    ``ramp=False``: constant ``d = decay``, so a pre-trained teacher is kept and only slowly averaged
    towards the student (JRSS: the Mono-Seg teacher). ``buffers="copy"`` copies buffers (e.g. BatchNorm
    statistics) from the student (``AveragedModel(use_buffers=False)``); ``"keep"`` leaves the teacher's
    own (``use_buffers=True`` with an average that skips buffers), for a module that re-estimates them
    for the teacher's weights, e.g. when the student's statistics are taken with dropout on.

    The averaged model counts the copy made at a reset as its first average (``n_averaged = 1``), so
    ``n = n_averaged − 1``.
    """

    def __init__(self, decay: float = 0.99, ramp: bool = True, buffers: str = "copy") -> None:
        if buffers not in ("copy", "keep"):
            raise ValueError(f"buffers: expected 'copy' or 'keep', got {buffers!r}")
        self.decay = decay
        self.ramp = ramp
        self.buffers = buffers
        self.average: AveragedModel | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def teacher(self) -> nn.Module | None:
        """The teacher network (same class and state-dict keys as the student), or ``None`` before a reset."""
        return None if self.average is None else self.average.module

    @property
    def num_updates(self) -> int:
        """EMA updates since the last reset."""
        return 0 if self.average is None else int(self.average.n_averaged) - 1

    def reset(self, student: nn.Module) -> nn.Module:
        """Make the teacher an exact, frozen copy of ``student`` and restart the decay ramp."""
        self.average = AveragedModel(student, multi_avg_fn=self._average, use_buffers=self.buffers == "keep")
        self.average.eval().requires_grad_(False)
        self.average.n_averaged.fill_(1)
        return self.average.module

    def decay_at(self, num_averaged: int) -> float:
        """The decay of the update that follows ``num_averaged`` averages (the reset copy included)."""
        return min(self.decay, 1.0 - 1.0 / num_averaged) if self.ramp else self.decay

    @torch.no_grad()
    def _average(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """``multi_avg_fn`` of the :class:`AveragedModel`: in place ``a ← d·a + (1 − d)·c``; with
        ``buffers="keep"`` (``use_buffers=True``) the teacher's buffers are left as they are."""
        d = self.decay_at(int(num_averaged))
        kept = {b.data_ptr() for b in self.average.module.buffers()} if self.average.use_buffers else set()
        for target, value in zip(averaged, current):
            if target.data_ptr() not in kept:
                target.mul_(d).add_(value, alpha=1.0 - d)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student``'s current weights."""
        if self.average is None:
            self.reset(student)
        self.average.update_parameters(student)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require(pl_module, EMAStudent, "callbacks.ema.EMATeacher")
        if self.average is None:
            self.reset(pl_module.ema_student())
        self.average.to(pl_module.device)
        if self._pending_state is not None:
            self.average.load_state_dict(self._pending_state)
            self._pending_state = None
        if isinstance(pl_module, TeacherUser):
            pl_module.attach_teacher(lambda: self.teacher)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, TeacherUser) and pl_module.teacher_restart_due():
            self.reset(pl_module.ema_student())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if pl_module.student_updated():
            self.update(pl_module.ema_student())

    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {"average": None}
        return {"average": {k: v.detach().cpu().clone() for k, v in self.average.state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["average"] is None:
            return
        if self.average is None:
            self._pending_state = state_dict["average"]
        else:
            self.average.load_state_dict(state_dict["average"])
