"""The AdaCS method with each objective: gradient isolation, stages, one training step, weight-map
snapshots; the estimators it trains in 2D/3D; the prostate benchmark's helpers. The objectives'
formulas are tested in tests/unit/objectives/."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from callbacks.snapshots import WeightMapSnapshot, map_to_image
from regframe.estimators.base import IdentityEstimator
from regframe.estimators.transmorph import TransMorph
from regframe.estimators.unet_regressor import UNetRegressor, default_unet
from regframe.features.scoring import ScoringUNet, VarianceUNet
from regframe.methods.adaptive_scoring import AdaptiveCorrespondenceScoring
from regframe.methods.base import RegistrationModule
from regframe.objectives.adacs import AdaCS
from regframe.objectives.adaframe import AdaFrame
from regframe.objectives.adareg import AdaReg
from regframe.objectives.nll import NLL, BetaNLL
from regframe.objectives.residual import ResidualObjective
from regframe.objectives.vanilla import Vanilla
from regframe.spatial import compose

warnings.filterwarnings("ignore", category=UserWarning)
TINY = (4, 8, 8, 8, 8, 4)
OBJECTIVES = ("vanilla", "nll", "beta_nll", "adareg", "adaframe", "adacs")


def tiny_objective(name: str, dims: int, warmup: int) -> ResidualObjective:
    if name == "adacs":
        return AdaCS(ScoringUNet(dims, features=TINY), warmup_epochs=warmup)
    if name in ("nll", "beta_nll"):
        return (NLL if name == "nll" else BetaNLL)(VarianceUNet(dims, features=TINY))
    return {"vanilla": Vanilla, "adareg": AdaReg, "adaframe": AdaFrame}[name]()


def tiny_module(objective: str = "adacs", dims: int = 2, warmup: int = 1) -> AdaptiveCorrespondenceScoring:
    estimator = UNetRegressor(dims, backbone=default_unet(dims, features=TINY), backbone_channels=TINY[-1],
                              init_std=1e-2)
    return AdaptiveCorrespondenceScoring(estimator, tiny_objective(objective, dims, warmup), compute_hd95=False,
                                         optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))


def blob_pair(shape=(16, 16), shift: float = 2.0) -> dict:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    centre = torch.tensor([n / 2 for n in shape]).view(-1, *([1] * len(shape)))
    fixed = torch.exp(-((grid - centre) ** 2).sum(0) / 12.0)
    moving = torch.exp(-((grid - centre - shift) ** 2).sum(0) / 12.0)
    return {"fixed": fixed[None, None], "moving": moving[None, None]}


def grads(module: torch.nn.Module) -> list:
    return [p.grad for p in module.parameters()]


def displacement_loss(module: AdaptiveCorrespondenceScoring, batch: dict, stage: str) -> torch.Tensor:
    disp, warped = module.align(batch)
    return module.objective(batch["fixed"], warped, disp, stage)[0]


# ---------------------------------------------------------------- gradient isolation
def test_scoring_step_does_not_reach_the_displacement_net():
    module = tiny_module("adacs")
    batch = blob_pair()
    with torch.no_grad():
        _, warped = module.align(batch)
    module.objective.weight_net_loss(batch["fixed"], warped)[0].backward()
    assert all(g is None for g in grads(module.estimator))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(module.objective.weight_net))


def test_displacement_step_does_not_reach_the_scorer():
    module = tiny_module("adacs")
    displacement_loss(module, blob_pair(), "alternate").backward()
    assert all(g is None for g in grads(module.objective.weight_net))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(module.estimator))


@pytest.mark.parametrize("objective", ["nll", "beta_nll"])
def test_variance_net_trains_jointly_with_the_estimator(objective):
    module = tiny_module(objective)
    displacement_loss(module, blob_pair(), "displacement").backward()
    assert any(g is not None and g.abs().sum() > 0 for g in grads(module.objective.weight_net))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(module.estimator))
    assert len(module.configure_optimizers()) == 2


# ---------------------------------------------------------------- stages
class ParameterWatch(pl.Callback):
    """Records, per epoch, which networks changed."""

    def __init__(self) -> None:
        self.changed: list[tuple[bool, bool]] = []

    @staticmethod
    def flat(net: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in net.parameters()]).clone()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.before = (self.flat(module.estimator), self.flat(module.objective.weight_net))

    def on_train_epoch_end(self, trainer, module) -> None:
        after = (self.flat(module.estimator), self.flat(module.objective.weight_net))
        self.changed.append(tuple(not torch.equal(a, b) for a, b in zip(self.before, after)))


def test_training_switches_networks_at_the_right_epochs():
    module = tiny_module("adacs", warmup=1)
    batch = blob_pair()
    loader = DataLoader([batch, batch], batch_size=None)
    watch = ParameterWatch()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[watch], accelerator="cpu")
    trainer.fit(module, train_dataloaders=loader)
    # (estimator changed, scorer changed) per epoch: displacement only, scoring only, both
    assert watch.changed == [(True, False), (False, True), (True, True)]
    assert module.objective.residual_momentum.item() > 0
    assert trainer.callback_metrics["stage"].item() == 2.0  # alternate
    assert trainer.global_step == 2 + 2 + 2 * 2  # one optimiser step per network and batch


@pytest.mark.parametrize("interval, expected", [("epoch", [1e-2, 5e-3, 0.0]), ("step", [1e-2, 0.0, 1e-2])])
def test_the_schedulers_step_after_every_batch_or_every_epoch(interval, expected):
    """CosineAnnealingLR(T_max=2) from 1e-2: stepped per epoch it reads 1e-2, 5e-3, 0 at the starts of
    epochs 0-2; stepped per batch (two batches an epoch) it is back at 1e-2 after each period of 2."""
    module = AdaptiveCorrespondenceScoring(
        tiny_module("vanilla").estimator, Vanilla(), compute_hd95=False, lr_scheduler_interval=interval,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2))
    rates = []

    class EpochStartRate(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[EpochStartRate()], accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader([blob_pair(), blob_pair()], batch_size=None))
    assert rates == [pytest.approx(r, abs=1e-12) for r in expected]
    with pytest.raises(ValueError, match="lr_scheduler_interval"):
        AdaptiveCorrespondenceScoring(module.estimator, Vanilla(), lr_scheduler_interval="batch")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_trains_one_step_and_exposes_weight_maps(objective):
    module = tiny_module(objective, warmup=0)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader([blob_pair()], batch_size=None))
    maps = module.weight_maps(blob_pair())
    assert "residual" in maps and (len(maps) == 2) == (objective != "vanilla")
    assert all(m.shape == (1, 1, 16, 16) and torch.isfinite(m).all() for m in maps.values())
    residual = (blob_pair()["fixed"] - module.align(blob_pair())[1]).pow(2)
    torch.testing.assert_close(maps["residual"], residual.detach())


def test_momentum_is_saved_with_the_module():
    module = tiny_module("adacs")
    module.objective.residual_momentum.fill_(0.25)
    again = tiny_module("adacs")
    again.load_state_dict(module.state_dict())
    assert again.objective.residual_momentum.item() == 0.25


# ---------------------------------------------------------------- estimators
@pytest.mark.parametrize("dims,shape", [(2, (20, 18)), (3, (10, 12, 9))])
def test_regressors_forward_2d_3d(dims, shape):
    torch.manual_seed(0)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    for estimator in (UNetRegressor(dims, backbone=default_unet(dims, features=TINY), backbone_channels=TINY[-1]),
                      UNetRegressor(dims, backbone=default_unet(dims, features=TINY), backbone_channels=TINY[-1],
                                    integration_steps=4),
                      TransMorph(dims, feature_size=12)):
        disp = estimator(fixed, moving)
        assert disp.shape == (2, dims, *shape)
        assert disp.abs().max() < 0.05  # near-identity at initialisation


def test_scaling_and_squaring_matches_regframe_convention():
    torch.manual_seed(0)
    est = UNetRegressor(2, backbone=default_unet(2, features=TINY), backbone_channels=TINY[-1], integration_steps=1)
    velocity = torch.nn.functional.avg_pool2d(torch.randn(1, 2, 24, 24) * 3, 5, 1, 2)
    # one squaring step: exp(v) ≈ (id + v/2)∘(id + v/2), regframe's backward composition
    assert torch.allclose(est.integrate(velocity), compose(velocity / 2, velocity / 2), atol=1e-5)
    constant = torch.ones(1, 2, 12, 12) * torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)
    assert torch.allclose(est.integrate(constant), constant, atol=1e-5)  # a translation integrates to itself


def test_regressor_rejects_mismatched_inputs():
    est = UNetRegressor(2, backbone=default_unet(2, features=TINY), backbone_channels=TINY[-1])
    with pytest.raises(ValueError, match="fixed"):
        est(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


# ---------------------------------------------------------------- snapshots
class RecordingWandb(WandbLogger):
    def __init__(self) -> None:  # no W&B run is created
        self.calls = []

    def log_image(self, key, images, step=None, **kwargs):
        self.calls.append((key, images, kwargs))


def test_snapshot_logs_score_next_to_residual_only_for_wandb():
    batch = blob_pair((12, 10, 8))
    module = tiny_module("adacs", dims=3)
    callback = WeightMapSnapshot(every_n_steps=1)
    callback.on_train_batch_end(SimpleNamespace(loggers=[], global_step=0), module, None, batch, 0)  # no-op
    wandb = RecordingWandb()
    callback.on_train_batch_end(SimpleNamespace(loggers=[wandb], global_step=0), module, None, batch, 0)
    (key, images, kwargs), = wandb.calls
    assert kwargs["caption"] == ["residual", "score"]
    assert all(im.shape == (12, 10) and 0 <= im.min() and im.max() <= 1 for im in images)
    assert map_to_image(torch.ones(1, 4, 4)).max() == 0  # a constant map does not divide by zero


def test_snapshot_requires_a_weight_map_source():
    callback = WeightMapSnapshot()
    callback.on_fit_start(SimpleNamespace(), tiny_module("vanilla"))  # AdaCS is a WeightMapSource
    with pytest.raises(TypeError, match=r"WeightMapSnapshot needs a WeightMapSource.*weight_maps"):
        callback.on_fit_start(SimpleNamespace(), RegistrationModule(IdentityEstimator()))


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "adacs_prostate.py"
    spec = importlib.util.spec_from_file_location("adacs_prostate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_rank_normalisation_equalises_the_histogram():
    bench = _benchmark()
    volume = torch.tensor([[[[0.0, 200.0], [50.0, 50.0]]]])[None]  # (1, 1, 1, 2, 2), uint8 values
    ranks = bench.normalise(volume, "rank")
    assert ranks.min() == 0.0 and ranks.max() == 1.0
    assert torch.equal(ranks.flatten().argsort(stable=True), volume.flatten().argsort(stable=True))
    assert torch.allclose(bench.normalise(volume, "scale"), volume / 255.0)
    with pytest.raises(ValueError, match="normalisation"):
        bench.normalise(volume, "zscore")


def test_benchmark_split_keeps_test_cases_out_of_training_and_validation():
    bench = _benchmark()
    cases = [{"id": i} for i in range(30)]
    train, val, test = bench.split(cases, test_cases=6, val_cases=4)
    _, _, test_without_val = bench.split(cases, test_cases=6)
    ids = lambda pairs: {c["id"] for pair in pairs for c in pair}  # noqa: E731
    assert len(test) == 3 and len(val) == 2 and len(train) == 20
    assert ids(test) == ids(test_without_val)  # the test pairs do not depend on the validation split
    assert not ids(test) & ids(val) and not (ids(test) | ids(val)) & {c["id"] for c in train}


def test_benchmark_synthetic_pair_is_seeded_and_warps_label_with_the_stored_field():
    bench = _benchmark()
    from regframe.spatial import warp, warp_labels

    generator = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 1, 20, 24, 18, dtype=torch.int64)
    label[..., 5:15, 6:18, 4:14] = 1
    case = {"id": "obs000", "full": torch.rand(1, 1, 20, 24, 18, generator=generator), "label": label,
            "spacing": (1.5, 1.5, 1.5)}
    fixed, moving = bench.synthetic_pair(case, 0.5, seed=3, shadow_prob=1.0)
    again_fixed, again = bench.synthetic_pair(case, 0.5, seed=3, shadow_prob=1.0)
    other = bench.synthetic_pair(case, 0.5, seed=4)[1]
    assert torch.equal(moving["full"], again["full"]) and torch.equal(fixed["full"], again_fixed["full"])
    assert not torch.equal(moving["field"], other["field"])
    assert torch.equal(moving["label"], warp_labels(label, moving["field"])) and torch.equal(fixed["label"], label)
    length = moving["field"].norm(dim=1)
    assert length.max() <= 8.0 + 1e-4 and (abs(length.mean() - 4.0) < 1e-3 or abs(length.max() - 8.0) < 1e-3)
    assert fixed["small"].shape[2:] == (10, 12, 9) and 0 <= moving["full"].min() and moving["full"].max() <= 1
    shadow = moving["shadow"]
    assert shadow.any() and moving["full"][shadow].mean() < 0.2 * moving["full"][~shadow].mean()
    clean_fixed, clean = bench.synthetic_pair(case, 0.5, seed=3, noise=0.0, shadow_prob=0.0)
    assert torch.allclose(clean["full"], warp(case["full"], clean["field"])) and torch.equal(clean_fixed["full"], case["full"])
    assert not clean["shadow"].any()
    assert torch.equal(bench.random_field((20, 24, 18), torch.Generator().manual_seed(1)),
                       bench.random_field((20, 24, 18), torch.Generator().manual_seed(1)))


def test_benchmark_split_keeps_the_cases_of_a_patient_together():
    bench = _benchmark()
    cases = [{"id": i, "patient": i // 2} for i in range(30)]  # 15 patients of 2 cases
    for seed in range(5):
        train, val, test = bench.split(cases, test_cases=6, val_cases=4, seed=seed)
        parts = [{c["patient"] for c in train}, {c["patient"] for pair in val for c in pair},
                 {c["patient"] for pair in test for c in pair}]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(test) == 3 and len(val) == 2 and len(train) == 20
        assert all(a["patient"] != b["patient"] for a, b in test + val)  # pairs are inter-patient
