"""The unweighted baseline: ``mean(r²) + λ‖∇u‖²``."""

from __future__ import annotations

from torch import Tensor

from regframe.objectives.residual import ResidualObjective


class Vanilla(ResidualObjective):
    """Mean squared intensity residual plus the diffusion regulariser (VoxelMorph's MSE loss)."""

    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        return r2.mean(), {}
