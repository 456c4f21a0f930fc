"""Every YAML in ``experiments/`` (backbone snippets included) runs one training step and one
validation batch (Lightning's ``fast_dev_run``) with its small override file ``tests/conf/<same
path>.yaml``, on tiny generated data; and every shipped data section that points into
``../shared/data`` sets up on the real files.

Overlay configs (CPU-scale variants, baselines, backbone snippets) are composed after the config
they extend, named in ``BASES``. Nothing else is overridden here except where the data lives
(a temporary folder) and where the run writes.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml
from jsonargparse import ArgumentParser

from regframe.cli import RegframeCLI
from regframe.estimators.cst_pipeline import cst_io
from regframe.methods.base import RegistrationModule
from regframe.optim.instance import InstanceOptimisation

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
CONF = REPO / "tests" / "conf"
BASES = {  # overlay config (glob, relative to experiments/) -> the configs it is added after
    "demo.yaml": ["abdomen_cst.yaml"],
    "abdomen_cst_cpu.yaml": ["abdomen_cst.yaml"],
    "abdomen_cst_2d.yaml": ["abdomen_cst.yaml"],
    "abdomen_jrss_cpu.yaml": ["abdomen_jrss.yaml"],
    "abdomen_supervised_2d.yaml": ["abdomen_mind_supervised.yaml"],
    **{f"prostate_us_{baseline}.yaml": ["prostate_us_adacs.yaml"]
       for baseline in ("vanilla", "nll", "beta_nll", "adareg", "adaframe", "transmorph")},
    **{f"acdc_{overlay}.yaml": ["acdc_adacs.yaml"]
       for overlay in ("vanilla", "nll", "beta_nll", "adareg", "adareg_source", "adaframe", "transmorph",
                       "diffusemorph")},
    "backbones/cst_*.yaml": ["abdomen_cst.yaml"],
    "backbones/registration_*.yaml": ["prostate_us_adacs.yaml"],
    "backbones/segmenter_*.yaml": ["prostate_jrss.yaml"],
}
CONFIGS = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))


def bases(config: str) -> list[Path]:
    for pattern, names in BASES.items():
        if fnmatch.fnmatch(config, pattern):
            return [EXPERIMENTS / name for name in names]
    return []


def data_classes(paths: list[Path]) -> tuple[str, str | None]:
    """The data module class after composing ``paths`` and, for a slice module, its volumes' class."""
    outer, inner = "", None
    for path in paths:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        outer = data.get("class_path", outer)
        volumes = (data.get("init_args") or {}).get("volumes") or {}
        inner = volumes.get("class_path", inner)
    return outer, inner


def data_location(paths: list[Path], tmp_path: Path, paired_root: Path, request: pytest.FixtureRequest) -> dict:
    """The ``data.init_args`` that put a config's data in a test folder (point clouds: the real
    ``../shared/data/LungCT_L2R`` through the ``shared_data`` fixture, which skips when it is absent;
    ACDC: the generated layout of the ``fake_acdc`` fixture)."""
    outer, inner = data_classes(paths)
    leaf = (inner or outer).rpartition(".")[2]
    if leaf == "PointCloudDataModule":
        return {"root": str(request.getfixturevalue("shared_data") / "LungCT_L2R")}
    if leaf == "ACDCDataModule":
        return {"root": str(request.getfixturevalue("fake_acdc"))}
    root = {"PairedDataModule": str(paired_root), "PhantomDataModule": str(tmp_path / "phantom")}[leaf]
    return {"volumes": {"init_args": {"root": root}}} if inner else {"root": root}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_one_step(config: str, tmp_path: Path, paired_phantom: Path, monkeypatch: pytest.MonkeyPatch,
                              request: pytest.FixtureRequest):
    override = CONF / config
    assert override.is_file(), f"add the small override file tests/conf/{config} for experiments/{config}"
    monkeypatch.chdir(tmp_path)  # configs write under ./runs
    configs = [*bases(config), EXPERIMENTS / config, override]
    location = tmp_path / "location.yaml"
    location.write_text(yaml.safe_dump({"data": {"init_args": data_location(configs, tmp_path, paired_phantom, request)},
                                        "trainer": {"default_root_dir": str(tmp_path)}}))
    args = ["fit", *[a for c in [*configs, location] for a in ("--config", str(c))], "--trainer.fast_dev_run=true"]
    cli = RegframeCLI(args=args)
    assert cli.trainer.state.finished
    metrics = cli.trainer.callback_metrics
    if cli.model.configure_optimizers() is not None:  # SAMConvex has nothing to train
        assert cli.trainer.global_step >= 1
    if isinstance(cli.model, RegistrationModule):
        assert 0.0 <= float(metrics["val/dice"]) <= 1.0


def shipped_data_section(config: str) -> dict:
    """The ``data`` section of ``config`` composed after its bases (a new ``class_path`` starts afresh)."""
    merged: dict = {}
    for path in [*bases(config), EXPERIMENTS / config]:
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        if data.get("class_path") and data["class_path"] != merged.get("class_path"):
            merged = {"class_path": data["class_path"], "init_args": {}}
        merged = _deep_merge(merged, data)
    return merged


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _with_data_root(value, shared: Path):
    if isinstance(value, dict):
        return {k: _with_data_root(v, shared) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("../shared/data"):
        return str(shared) + value.removeprefix("../shared/data")
    return value


REAL_DATA_CONFIGS = [c for c in CONFIGS if "../shared/data" in yaml.safe_dump(shipped_data_section(c))]


@pytest.mark.real_data
@pytest.mark.parametrize("config", REAL_DATA_CONFIGS)
def test_shipped_data_section_sets_up_on_real_data(config: str, shared_data: Path):
    """The data section exactly as shipped (only the location of ``../shared/data`` adapted) builds its
    data module and sets it up: training and validation pairs exist."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    section = _with_data_root(shipped_data_section(config), shared_data)
    datamodule = parser.instantiate_classes(parser.parse_object({"data": section})).data
    datamodule.setup("fit")
    assert len(datamodule.train_pairs) > 0 and len(datamodule.val_pairs) > 0


CST_IO_CONFIGS = ["abdomen_cst.yaml", "abdomen_mind_supervised.yaml", "abdomen_ncc_supervised.yaml"]
IO_SETTINGS = ("similarity", "grid_spacing", "iterations", "lr", "data_weight", "smooth_weight", "smooth_pools",
               "feature_normalisation", "feature_scale", "final_smoothing", "final_smoothing_kernel",
               "foreground_threshold", "foreground_margin")


@pytest.mark.parametrize("config", CST_IO_CONFIGS)
def test_cst_configs_use_cst_io(config: str):
    """CST and its Table-1 baselines refine with exactly :func:`cst_io` (the YAML spells it out, so a
    change to one must reach the others); no CPU-scale overlay of them changes it (a backbone snippet
    may bring its own: ``cst_unet_regressor.yaml`` keeps ConvexAdam's IO on MIND)."""
    estimator = yaml.safe_load((EXPERIMENTS / config).read_text())["model"]["init_args"]["estimator"]
    io = estimator["init_args"]["io"]
    assert io["class_path"] == "regframe.optim.instance.InstanceOptimisation"
    built, expected = InstanceOptimisation(**io["init_args"]), cst_io()
    assert {k: getattr(built, k) for k in IO_SETTINGS} == {k: getattr(expected, k) for k in IO_SETTINGS}
    for overlay, names in BASES.items():
        if config in names and not overlay.startswith("backbones/"):
            for path in EXPERIMENTS.glob(overlay):
                assert "io:" not in path.read_text(), f"{path.name} changes the IO of {config}"


def test_the_acdc_cosine_schedule_spans_the_runs_epochs():
    """``T_max`` follows ``trainer.max_epochs`` (a shorter control decays over its own epochs), and both
    networks' rates are stepped once per epoch."""
    cli = RegframeCLI(args=["--config", str(EXPERIMENTS / "acdc_adacs.yaml"), "--trainer.max_epochs", "8",
                            "--trainer.logger", "false"], run=False)
    optimizers, schedulers = cli.model.configure_optimizers()
    assert len(optimizers) == len(schedulers) == 2  # estimator and scorer
    assert all(s["scheduler"].T_max == 8 and s["interval"] == "epoch" for s in schedulers)
