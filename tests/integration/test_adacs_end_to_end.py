"""AdaCS end to end: the 3D and 2D main configs run through all three training stages (displacement
warm-up, scoring warm-up, alternating) on a tiny phantom, and a baseline composed with the 2D config
is 2D. (That every config runs one step is tests/integration/test_configs.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from regframe.cli import RegframeCLI
from regframe.objectives.adacs import AdaCS
from regframe.objectives.nll import NLL

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
PHANTOM = {"class_path": "data_modules.phantom.PhantomDataModule",
           "init_args": {"subjects": 4, "val_subjects": 2, "pair_order": "unordered", "shape": [16, 16, 16], "val_max_pairs": 1}}


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


def fit(configs: list[Path], tmp_path: Path, epochs: int, overrides: tuple[str, ...] = ()) -> RegframeCLI:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + [
        "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.check_val_every_n_epoch", str(epochs), "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(tmp_path), "--model.init_args.compute_hd95", "false", *overrides]
    return RegframeCLI(args=args)


def warmup(epochs: int) -> tuple[str, ...]:
    return ("--model.init_args.objective.init_args.warmup_epochs", str(epochs))


@pytest.mark.parametrize("two_d", [False, True], ids=["3d", "2d"])
def test_main_configs_run_through_all_stages(tmp_path: Path, phantom_root: Path, two_d: bool):
    main = EXPERIMENTS / ("prostate_us_adacs_2d.yaml" if two_d else "prostate_us_adacs.yaml")
    cli = fit([main, tiny_data(tmp_path, phantom_root, two_d)], tmp_path, epochs=3, overrides=warmup(1))
    objective = cli.model.objective
    assert isinstance(objective, AdaCS) and cli.model.estimator.spatial_dims == (2 if two_d else 3)
    assert cli.trainer.current_epoch == 3 and cli.trainer.callback_metrics["stage"].item() == 2.0  # alternate
    assert objective.residual_momentum.item() > 0
    assert "val/dice" in cli.trainer.callback_metrics


def test_a_baseline_takes_the_dimensionality_of_the_2d_main_config(tmp_path: Path, phantom_root: Path):
    configs = [EXPERIMENTS / "prostate_us_adacs_2d.yaml", EXPERIMENTS / "prostate_us_nll.yaml",
               tiny_data(tmp_path, phantom_root, True)]
    cli = fit(configs, tmp_path, epochs=1)
    assert type(cli.model.objective) is NLL and cli.model.objective.weight_net.unet.final_conv.weight.dim() == 2 + 2
    assert "val/dice" in cli.trainer.callback_metrics
