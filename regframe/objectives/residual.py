"""The interface of AdaCS's objectives: a loss for the displacement estimator built from the
squared intensity residual ``r² = (I_t − I_s∘(id+u))²`` and the field ``u``.

An objective may own a per-voxel weighting network (``weight_net``). It trains either jointly with
the estimator on the estimator's loss (NLL's variance net) or on its own :meth:`weight_net_loss` in
separate steps (AdaCS's scorer, ``separate_weight_net = True``); the method gives the objective's
parameters their own optimiser. The objective's :attr:`schedule` says which steps run in each epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from regframe.losses import diffusion
from regframe.stages import StageSchedule

#: Stage names of a schedule: the estimator trains alone (``displacement``), the separately trained
#: weight net trains alone (``scoring``), or both take one step per batch (``alternate``).
STAGES = ("displacement", "scoring", "alternate")


class ResidualObjective(nn.Module, ABC):
    """Estimator loss ``data(r²) + smooth_weight · smooth(u)``, returned with its parts for logging.

    Args:
        smooth_weight: λ on the smoothness term (default ``mean ‖∇u‖²``, forward differences, voxels).
    Subclasses define :meth:`data_term` and may override :meth:`regulariser`, :meth:`weight_maps`,
    :meth:`weight_net_loss` and :attr:`schedule` (default: ``displacement`` in every epoch).
    """

    separate_weight_net: ClassVar[bool] = False

    def __init__(self, smooth_weight: float = 0.01) -> None:
        super().__init__()
        self.smooth_weight = smooth_weight
        self.schedule = StageSchedule([("displacement", 1)])

    def forward(self, fixed: Tensor, warped: Tensor, disp: Tensor,
                stage: str = "displacement") -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the estimator for ``fixed``, ``warped`` ``(B, 1, *S)`` and ``disp`` ``(B, D, *S)``
        (voxels) in the stage named ``stage``; returns ``(loss, logs)`` with detached scalar logs."""
        r2 = (fixed - warped).pow(2)
        data, data_logs = self.data_term(fixed, warped, r2, stage)
        smooth, smooth_logs = self.regulariser(disp, r2)
        logs = {"residual": r2.mean().detach(), **data_logs, **smooth_logs, "smoothness": smooth.detach()}
        return data + self.smooth_weight * smooth, logs

    @abstractmethod
    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The (weighted) mean of the squared residual ``r²`` ``(B, 1, *S)`` and its logs."""

    def regulariser(self, disp: Tensor, r2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Smoothness of ``disp``: ``mean ‖∇u‖²`` (forward differences, averaged over axes), no logs."""
        return diffusion(disp), {}

    def weight_maps(self, fixed: Tensor, warped: Tensor) -> dict[str, Tensor]:
        """The objective's per-voxel weights ``(B, 1, *S)`` by name, for inspection; none by default."""
        return {}

    def weight_net_loss(self, fixed: Tensor, warped: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a separately trained ``weight_net`` for a detached ``warped``; returns ``(loss, logs)``."""
        raise NotImplementedError(f"{type(self).__name__} has no separately trained weight net")
