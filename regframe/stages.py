"""Stages of a training run as a pure function of the epoch, and the typed protocols that the
callbacks in ``callbacks/`` are written against.

A :class:`StageSchedule` is a list of named stages with a length in epochs; ``stage_at(epoch)``
is all a method or callback needs, so a resumed run resumes its stage. Methods *declare* the
protocols below by implementing their members; callbacks check them with ``isinstance`` and say
which member is missing, instead of relying on undocumented duck typing.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

StageLRSchedulerCallable = Callable[[Optimizer, int], LRScheduler]
"""A scheduler factory called with the optimiser and the optimiser steps per stage, e.g.
``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` (its ``T_0``: a warm restart at every
stage start) given in YAML by ``class_path`` with ``init_args: {eta_min: ...}``."""


@dataclass(frozen=True)
class Stage:
    """One stage: its position in the schedule, its name and its epoch range ``[start, stop)``."""

    index: int
    name: str
    start: int
    stop: int

    @property
    def epochs(self) -> int:
        return self.stop - self.start


class StageSchedule:
    """Named stages of given lengths (epochs), run in order.

    Args:
        stages: ``(name, epochs)`` pairs; every length must be >= 1.
    After the last stage ends, ``stage_at`` keeps returning the last stage.
    """

    def __init__(self, stages: Sequence[tuple[str, int]]) -> None:
        if not stages:
            raise ValueError("a stage schedule needs at least one stage")
        bounds, start = [], 0
        for index, (name, epochs) in enumerate(stages):
            if int(epochs) < 1:
                raise ValueError(f"stage {index} ({name!r}) must last at least 1 epoch, got {epochs}")
            bounds.append(Stage(index, str(name), start, start + int(epochs)))
            start += int(epochs)
        self.stages: tuple[Stage, ...] = tuple(bounds)

    @classmethod
    def repeated(cls, name: str, count: int, epochs: int) -> "StageSchedule":
        """``count`` stages called ``name`` of ``epochs`` epochs each (e.g. CST's self-training stages)."""
        return cls([(name, epochs)] * count)

    @property
    def total_epochs(self) -> int:
        return self.stages[-1].stop

    def __len__(self) -> int:
        return len(self.stages)

    def stage_at(self, epoch: int) -> Stage:
        """The stage that ``epoch`` (0-based) belongs to."""
        for stage in self.stages:
            if epoch < stage.stop:
                return stage
        return self.stages[-1]

    def is_stage_end(self, epoch: int) -> bool:
        """Whether ``epoch`` is the last epoch of its stage."""
        return epoch + 1 == self.stage_at(epoch).stop

    def is_stage_start(self, epoch: int) -> bool:
        return epoch == self.stage_at(epoch).start

    def __repr__(self) -> str:
        return "StageSchedule([" + ", ".join(f"({s.name!r}, {s.stop - s.start})" for s in self.stages) + "])"


def optimizer_steps_per_epoch(trainer: Any) -> int:
    """Optimiser steps in one training epoch (after ``limit_train_batches`` and
    ``accumulate_grad_batches``), as Lightning will count them.

    Usable in ``configure_optimizers``: it measures the datamodule's train dataloader without
    handing it to the trainer, which would keep that loader (and its sampler weights) for the first
    epochs instead of the one built after ``on_fit_start`` (e.g. after stage-0 pseudo labels)."""
    batches = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if batches < 1:
        raise ValueError(f"a training epoch has no batches (limit_train_batches={limit})")
    return math.ceil(batches / trainer.accumulate_grad_batches)


@runtime_checkable
class Staged(Protocol):
    """A module whose training is divided into stages (``callbacks.stages``). ``stage_dice`` is
    keyed by stage number: ``index + 1`` for the stages of ``schedule``, 0 for the result before
    any training stage (e.g. CST's random-feature labels)."""

    schedule: StageSchedule
    stage_dice: dict[int, float]


@runtime_checkable
class SelfTraining(Staged, Protocol):
    """A self-training module that learns from pseudo labels it regenerates at stage ends
    (``callbacks.pseudo_labels.PseudoLabelRefresh``): training stage ``t`` (``schedule`` index
    ``t - 1``) learns from the labels of stage ``t - 1``; stage 0's come from a random estimator."""

    def open_pseudo_labels(self, trainer: Any) -> Any:
        """Create or reopen the pseudo-label store; returns it (``.served_stage``, ``.root``)."""

    def random_stage0_estimator(self) -> nn.Module:
        """The estimator whose outputs are the stage-0 pseudo labels."""

    def generate_pseudo_labels(self, datamodule: Any, stage: int, estimator: nn.Module | None = None) -> Tensor:
        """Write the labels of ``stage`` for every training pair; return the per-pair difficulty."""

    def mean_val_dice(self, estimator: nn.Module, dataloader: Any) -> float:
        """Mean validation Dice of ``estimator``."""


@runtime_checkable
class PseudoLabelListener(Protocol):
    """A callback told about every pseudo-label refresh (e.g. difficulty-weighted sampling)."""

    def on_pseudo_labels(self, trainer: Any, pl_module: Any, stage: int, difficulty: Tensor) -> None: ...


@runtime_checkable
class EMAStudent(Protocol):
    """A module with a student network that an EMA teacher follows (``callbacks.ema.EMATeacher``)."""

    def ema_student(self) -> nn.Module:
        """The student network the teacher averages."""

    def student_updated(self) -> bool:
        """Whether the student's weights changed in the current training batch."""


@runtime_checkable
class TeacherUser(EMAStudent, Protocol):
    """An :class:`EMAStudent` that trains against the teacher (``callbacks.ema.EMATeacher``): the callback
    hands it a way to read the current teacher and restarts the teacher from the student when asked, so
    the module never looks the callback up."""

    def attach_teacher(self, teacher: Callable[[], nn.Module]) -> None:
        """Receive ``teacher``; ``teacher()`` returns the current teacher network (eval mode, frozen)."""

    def teacher_restart_due(self) -> bool:
        """Whether the teacher must restart as a copy of the student before the current training epoch."""


@runtime_checkable
class WeightMapSource(Protocol):
    """A module that can show its per-voxel loss weights (``callbacks.snapshots.WeightMapSnapshot``)."""

    def weight_maps(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Maps ``(B, 1, *S)`` by name (e.g. ``residual``, ``score``), without gradients."""


def require(module: Any, protocol: type, user: str) -> None:
    """Raise ``TypeError`` naming ``user`` and the missing members if ``module`` lacks ``protocol``."""
    if isinstance(module, protocol):
        return
    members = [name for name in dir(protocol) if not name.startswith("_") and name not in ("register",)]
    members += [name for base in protocol.__mro__ for name in inspect.get_annotations(base)]
    missing = sorted({m for m in members if not hasattr(module, m)})
    raise TypeError(f"{user} needs a {protocol.__name__} module; {type(module).__name__} lacks {missing}")
