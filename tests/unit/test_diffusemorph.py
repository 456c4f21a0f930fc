"""DiffuseMorph: the linear noise schedule and q(x_t | x_0) against their formulas, the diffusion
loss of a perfect noise predictor, shapes and the near-identity start in 2D/3D, the auxiliary-loss
protocol inside AdaCS with every objective, and a toy translation it learns."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from regframe.estimators.diffusemorph import DiffuseMorph, sinusoidal_embedding
from regframe.estimators.protocols import AuxiliaryLossSource, auxiliary_loss
from regframe.estimators.refine import Refined
from regframe.estimators.unet_regressor import UNetRegressor
from regframe.losses import diffusion
from regframe.methods.adaptive_scoring import AdaptiveCorrespondenceScoring
from regframe.noise_schedule import LinearNoiseSchedule
from regframe.objectives.vanilla import Vanilla
from regframe.spatial import warp

SMALL = (4, 8, 8)


def test_linear_schedule_alpha_bar_is_the_running_product():
    schedule = LinearNoiseSchedule(timesteps=5, beta_start=0.1, beta_end=0.5)
    torch.testing.assert_close(schedule.betas, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    torch.testing.assert_close(schedule.alpha_bars, torch.tensor([0.9, 0.72, 0.504, 0.3024, 0.1512]))
    ddpm = LinearNoiseSchedule()  # DDPM: 1e-4 .. 0.02 over 1000 steps; ᾱ_T ≈ 4e-5
    assert ddpm.alpha_bars[-1].item() == pytest.approx(math.exp(sum(math.log(1 - (1e-4 + k * (0.02 - 1e-4) / 999))
                                                                    for k in range(1000))), rel=1e-4)


def test_marginal_matches_two_chained_noising_steps():
    """q(x_1 | x_0) from two one-step kernels x_{s} = √(1−β_s) x_{s−1} + √β_s ε equals N(√ᾱ_1 x_0, 1 − ᾱ_1)."""
    schedule = LinearNoiseSchedule(timesteps=2, beta_start=0.1, beta_end=0.3)
    x0 = torch.full((1, 1), 0.8)
    mean, variance = schedule.marginal(x0, torch.tensor([1]))
    assert mean.item() == pytest.approx(math.sqrt(0.9 * 0.7) * 0.8) and variance.item() == pytest.approx(1 - 0.63)
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 400_000, generator=generator, dtype=torch.float64)
    chained = math.sqrt(0.7) * (math.sqrt(0.9) * 0.8 + math.sqrt(0.1) * first) + math.sqrt(0.3) * second
    assert chained.mean().item() == pytest.approx(mean.item(), abs=5e-3)
    assert chained.var().item() == pytest.approx(variance.item(), abs=5e-3)
    noise = torch.randn(3, 1, 4, 4, generator=generator)
    x = torch.rand(3, 1, 4, 4, generator=generator)
    t = torch.tensor([0, 1, 1])
    expected = schedule.alpha_bars[t].sqrt().view(3, 1, 1, 1) * x + (1 - schedule.alpha_bars[t]).sqrt().view(3, 1, 1, 1) * noise
    torch.testing.assert_close(schedule.sample(x, t, noise), expected)


def test_diffusion_loss_is_zero_for_a_perfect_noise_predictor(monkeypatch):
    model = DiffuseMorph(2, features=SMALL, timesteps=50)
    fixed, moving = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    noise, t = torch.randn(2, 1, 12, 12), torch.tensor([3, 40])

    def oracle(x_t, steps, fixed_image, moving_image):  # inverts x_t = √ᾱ fixed + √(1−ᾱ) ε
        alpha_bar = model.schedule.alpha_bars[steps].view(-1, 1, 1, 1)
        return (x_t - alpha_bar.sqrt() * fixed_image) / (1 - alpha_bar).sqrt()

    assert model.diffusion_loss(fixed, moving, t, noise).item() > 0.1
    monkeypatch.setattr(model, "predict_noise", oracle)
    assert model.diffusion_loss(fixed, moving, t, noise).item() == pytest.approx(0.0, abs=1e-8)


def test_sinusoidal_embedding_of_step_zero():
    embedding = sinusoidal_embedding(torch.tensor([0, 2]), 8)
    torch.testing.assert_close(embedding[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert embedding[1, 0].item() == pytest.approx(math.sin(2.0))


@pytest.mark.parametrize("dims,shape", [(2, (13, 18)), (3, (9, 10, 11))])
def test_shapes_and_near_identity_start(dims, shape):
    torch.manual_seed(0)
    model = DiffuseMorph(dims, features=SMALL, timesteps=10)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    disp = model(fixed, moving)
    assert disp.shape == (2, dims, *shape) and disp.abs().max() < 1e-3
    assert model.predict_noise(fixed, torch.tensor([1, 2]), fixed, moving).shape == (2, 1, *shape)
    loss = model.auxiliary_loss(fixed, moving)
    assert loss.dim() == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="spatial axes"):
        model(fixed[:, :, 0], moving[:, :, 0])


def test_auxiliary_loss_protocol_finds_diffusemorph_inside_wrappers_only():
    model = DiffuseMorph(2, features=SMALL, timesteps=10)
    assert isinstance(model, AuxiliaryLossSource)
    fixed = torch.rand(1, 1, 8, 8)
    torch.manual_seed(1)
    direct = model.auxiliary_loss(fixed, fixed)
    torch.manual_seed(1)
    assert auxiliary_loss(Refined(model), fixed, fixed).item() == pytest.approx(direct.item())
    assert auxiliary_loss(UNetRegressor(2), fixed, fixed) is None


def test_adacs_method_adds_the_diffusion_loss_and_trains_the_denoiser():
    model = DiffuseMorph(2, features=SMALL, timesteps=10)
    module = AdaptiveCorrespondenceScoring(model, Vanilla(), compute_hd95=False)
    before = model.noise_head.weight.detach().clone()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    pair = {"fixed": torch.rand(1, 1, 8, 8), "moving": torch.rand(1, 1, 8, 8)}
    trainer.fit(module, train_dataloaders=DataLoader([pair], batch_size=None))
    assert "train/auxiliary_loss" in trainer.callback_metrics
    assert not torch.equal(before, model.noise_head.weight)  # only the diffusion loss reaches the noise head


def test_learns_a_toy_translation():
    torch.manual_seed(0)
    grid = torch.stack(torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij"))
    blob = lambda c: torch.exp(-((grid - torch.tensor(c).view(2, 1, 1)) ** 2).sum(0) / 18.0)[None, None]
    fixed, moving = blob([12.0, 12.0]), blob([14.0, 11.0])  # the moving blob is shifted by (2, -1)
    model = DiffuseMorph(2, features=(8, 16, 16), timesteps=100, init_std=1e-2)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)

    def registration_loss() -> torch.Tensor:
        disp = model(fixed, moving)
        return (warp(moving, disp) - fixed).pow(2).mean() + 0.01 * diffusion(disp)

    with torch.no_grad():
        start = registration_loss().item()
    for _ in range(60):
        optimiser.zero_grad()
        (registration_loss() + model.auxiliary_loss(fixed, moving)).backward()
        optimiser.step()
    with torch.no_grad():
        end = registration_loss().item()
        centre = model(fixed, moving)[0, :, 12, 12]
    assert end < 0.3 * start
    assert centre[0].item() > 0.8 and centre[1].item() < -0.3  # u(centre) points towards the moving blob
