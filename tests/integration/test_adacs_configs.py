"""Every AdaCS experiment config (3D, 2D, each baseline composed with the main config) runs a few
training and validation steps, with its data section swapped for a tiny phantom and W&B off."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from regframe.cli import RegframeCLI

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BASELINES = ["vanilla", "nll", "beta_nll", "adareg", "adaframe",
             pytest.param("transmorph", marks=pytest.mark.slow)]
PHANTOM = {"class_path": "data_modules.phantom.PhantomDataModule",
           "init_args": {"subjects": 4, "val_subjects": 2, "pairs": "unordered", "shape": [16, 16, 16], "val_max_pairs": 1}}


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom")


def tiny_data(tmp_path: Path, root: Path, two_d: bool) -> Path:
    phantom = dict(PHANTOM, init_args=dict(PHANTOM["init_args"], root=str(root)))
    data = ({"class_path": "data_modules.slices.SliceDataModule", "init_args": {"volumes": phantom, "positions": [0.5]}}
            if two_d else phantom)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"data": data, "trainer": {"logger": False}}))
    return path


def fit(configs: list[Path], tmp_path: Path, warmup: int = 1, epochs: int = 3) -> RegframeCLI:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + [
        "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.check_val_every_n_epoch", str(epochs), "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(tmp_path), "--model.init_args.warmup_epochs", str(warmup),
        "--model.init_args.compute_hd95", "false"]
    return RegframeCLI(args=args)


@pytest.mark.parametrize("two_d", [False, True], ids=["3d", "2d"])
def test_main_configs_run_through_all_phases(tmp_path: Path, phantom_root: Path, two_d: bool):
    main = EXPERIMENTS / ("prostate_us_adacs_2d.yaml" if two_d else "prostate_us_adacs.yaml")
    cli = fit([main, tiny_data(tmp_path, phantom_root, two_d)], tmp_path)
    module = cli.model
    assert module.mode == "adacs" and module.estimator.spatial_dims == (2 if two_d else 3)
    assert cli.trainer.current_epoch == 3 and module.phase(2) == "alternate"
    assert module.residual_momentum.item() > 0
    assert "val/dice" in cli.trainer.callback_metrics


@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_configs_compose_with_the_main_one(tmp_path: Path, phantom_root: Path, baseline: str):
    configs = [EXPERIMENTS / "prostate_us_adacs.yaml", EXPERIMENTS / f"prostate_us_{baseline}.yaml",
               tiny_data(tmp_path, phantom_root, False)]
    cli = fit(configs, tmp_path, warmup=0, epochs=1)
    expected = "adacs" if baseline == "transmorph" else baseline
    assert cli.model.mode == expected
    assert type(cli.model.estimator).__name__ == ("TransMorph" if baseline == "transmorph" else "UNetRegressor")
    assert "val/dice" in cli.trainer.callback_metrics
