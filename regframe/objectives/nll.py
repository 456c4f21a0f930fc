"""Heteroscedastic baselines: a variance network ``σ² = h(I_t, stopgrad(I_s∘φ))`` trained jointly
with the estimator on the Gaussian negative log-likelihood of the residual (NLL), optionally with
each voxel's term weighted by ``stopgrad(σ^{2β})`` (β-NLL, Seitzer et al., 2022)."""

from __future__ import annotations

from torch import Tensor, nn

from regframe.features.scoring import VarianceUNet
from regframe.objectives.residual import ResidualObjective


class NLL(ResidualObjective):
    """``mean(r²/σ² + log σ²) + λ‖∇u‖²``; gradients reach the estimator and the variance net, but not
    the estimator through the variance net's ``warped`` input.

    Args:
        weight_net: the variance net ``h(I_t, warped) -> σ² > 0`` ``(B, 1, *S)``, squared intensity
            units; default a small :class:`VarianceUNet` with ``spatial_dims`` axes.
        spatial_dims: dimensionality of the default ``weight_net``.
        smooth_weight: λ.
    """

    def __init__(self, weight_net: nn.Module | None = None, spatial_dims: int = 3, smooth_weight: float = 0.01) -> None:
        super().__init__(smooth_weight)
        self.weight_net = weight_net if weight_net is not None else VarianceUNet(spatial_dims)

    def nll(self, r2: Tensor, variance: Tensor) -> Tensor:
        """Per-voxel Gaussian negative log-likelihood ``r²/σ² + log σ²`` (constants dropped)."""
        return r2 / variance + variance.log()

    def data_term(self, fixed: Tensor, warped: Tensor, r2: Tensor, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        variance = self.weight_net(fixed, warped.detach())
        return self.nll(r2, variance).mean(), {"variance": variance.mean().detach()}

    def weight_maps(self, fixed: Tensor, warped: Tensor) -> dict[str, Tensor]:
        return {"variance": self.weight_net(fixed, warped)}


class BetaNLL(NLL):
    """β-NLL: each voxel's NLL term times ``stopgrad(σ^{2β})``, so high-variance voxels keep their
    gradient on the residual; β = 0 is :class:`NLL`, β = 1 gives the residual the gradient of MSE.

    Args:
        beta: β (the paper's default 0.5); the other arguments as in :class:`NLL`.
    """

    def __init__(self, weight_net: nn.Module | None = None, spatial_dims: int = 3, smooth_weight: float = 0.01,
                 beta: float = 0.5) -> None:
        super().__init__(weight_net, spatial_dims, smooth_weight)
        self.beta = beta

    def nll(self, r2: Tensor, variance: Tensor) -> Tensor:
        return super().nll(r2, variance) * variance.detach().pow(self.beta)
