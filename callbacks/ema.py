"""EMA teacher for self-training: the teacher is an exponential moving average of a student network.

The teacher lives in this callback, not in the LightningModule, so the student's checkpoint weights
(``checkpoint["state_dict"]``) never contain it; the teacher's weights travel in the callback state
(``checkpoint["callbacks"]``) and are restored exactly on resume.

Protocol with the LightningModule: ``pl_module.ema_student()`` returns the student network and
``pl_module.student_updated()`` says whether its weights changed in the current training batch; the
module reads the teacher as ``callback.teacher`` and may ``reset`` it to the student at a stage start. Lightning's ``WeightAveraging``/``EMAWeightAveraging`` are not used because
they average the whole module and swap the average into it for validation and into the saved
``state_dict`` — the opposite of a separate teacher used during training.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


class EMATeacher(pl.Callback):
    """``teacher ← d·teacher + (1 − d)·student`` after each student update.

    ``ramp=True``: ramped decay ``d = min(decay, 1 − 1/(n + 1))`` (``n`` = updates since the last reset:
    the first update copies the student), for a teacher that starts from an untrained copy.
    ``ramp=False``: constant ``d = decay``, so a pre-trained teacher is kept and only slowly averaged
    towards the student (JRSS: the Mono-Seg teacher). ``buffers="copy"`` copies buffers (e.g. BatchNorm
    statistics) from the student; ``"keep"`` leaves the teacher's own (for a module that re-estimates
    them for the teacher's weights, e.g. when the student's statistics are taken with dropout on)."""

    def __init__(self, decay: float = 0.99, ramp: bool = True, buffers: str = "copy") -> None:
        if buffers not in ("copy", "keep"):
            raise ValueError(f"buffers: expected 'copy' or 'keep', got {buffers!r}")
        self.decay = decay
        self.ramp = ramp
        self.buffers = buffers
        self.teacher: nn.Module | None = None
        self.num_updates = 0
        self._pending_state: dict[str, Any] | None = None

    def reset(self, student: nn.Module) -> nn.Module:
        """Make the teacher an exact, frozen copy of ``student`` and restart the decay ramp."""
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.num_updates = 0
        return self.teacher

    def current_decay(self) -> float:
        return min(self.decay, 1.0 - 1.0 / (self.num_updates + 1)) if self.ramp else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """One EMA step towards ``student``'s current weights."""
        if self.teacher is None:
            self.reset(student)
        d = self.current_decay()
        teacher_state = self.teacher.state_dict()
        parameter_names = {name for name, _ in student.named_parameters()}
        for name, value in student.state_dict().items():
            target = teacher_state[name]
            if name in parameter_names:
                target.mul_(d).add_(value.detach(), alpha=1.0 - d)
            elif self.buffers == "copy":
                target.copy_(value)
        self.num_updates += 1

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.teacher is None:
            self.reset(pl_module.ema_student())
        self.teacher.to(pl_module.device)
        if self._pending_state is not None:
            self._apply(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if pl_module.student_updated():
            self.update(pl_module.ema_student())

    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None:
            return {"num_updates": self.num_updates, "teacher": None}
        return {"num_updates": self.num_updates,
                "teacher": {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.teacher is None:
            self._pending_state = state_dict
        else:
            self._apply(state_dict)

    def _apply(self, state: dict[str, Any]) -> None:
        self.num_updates = state["num_updates"]
        if state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
