"""A checkpoint written by ``regframe fit`` holds the model's YAML and the data module's
preprocessing, loads with ``weights_only=True`` and drives ``regframe register --checkpoint`` with
the training preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from regframe.checkpoint import recorded_preprocessing
from regframe.cli import main
from regframe.io import read_displacement
from regframe.methods.base import RegistrationModule
from regframe.preprocess import Preprocessing
from regframe.register import read_method_checkpoint, rebuild_method

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ckpt")
    tiny = tmp / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({
        "data": {"class_path": "data_modules.phantom.PhantomDataModule",
                 "init_args": {"root": str(tmp / "phantom"), "subjects": 4, "val_subjects": 2, "pair_order": "unordered",
                               "shape": [16, 16, 16], "clamp": [-200.0, 300.0], "scale": 0.002}},
        "trainer": {"logger": False, "max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                    "check_val_every_n_epoch": 1,
                    "default_root_dir": str(tmp / "run"), "enable_progress_bar": False}}))
    assert main(["fit", "--config", str(EXPERIMENTS / "prostate_us_adacs.yaml"), "--config",
                 str(EXPERIMENTS / "prostate_us_vanilla.yaml"), "--config", str(tiny),
                 "--model.init_args.compute_hd95", "false"]) == 0
    checkpoints = sorted((tmp / "run").rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    return checkpoints[-1], tmp / "phantom"


def test_checkpoint_holds_plain_config_and_loads_weights_only(trained_checkpoint):
    path, _ = trained_checkpoint
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    estimator = ckpt["hyper_parameters"]["estimator"]
    assert estimator["class_path"].endswith("UNetRegressor")
    assert ckpt["preprocessing"] == {"clamp": [-200.0, 300.0], "shift": 0.0, "scale": 0.002, "resample_factor": 1.0}
    from regframe.methods.adaptive_scoring import AdaptiveCorrespondenceScoring

    model = AdaptiveCorrespondenceScoring.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert isinstance(model.estimator, torch.nn.Module) and type(model.objective).__name__ == "Vanilla"
    torch.testing.assert_close(model.state_dict(), {k: v for k, v in ckpt["state_dict"].items()})


def test_register_with_checkpoint(trained_checkpoint, tmp_path, capsys):
    path, phantom = trained_checkpoint
    images = sorted(next(phantom.rglob("imagesTr")).glob("*.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(images[0]), str(images[1]), "--out", str(out), "--checkpoint", str(path)]) == 0
    disp = read_displacement(out / "disp.nii.gz", (16, 16, 16))
    assert torch.isfinite(disp).all() and (out / "warped.nii.gz").is_file()
    assert "s/pair" in capsys.readouterr().out


def test_adam_refines_the_network_field_and_zero_iterations_keep_it(trained_checkpoint, tmp_path, capsys):
    """``--adam N`` wraps the trained network in pyramid_mind's Adam stage: N = 0 writes exactly the
    network's field, N > 0 a different one; without --checkpoint or with N < 0 it is refused before any work."""
    path, phantom = trained_checkpoint
    images = [str(p) for p in sorted(next(phantom.rglob("imagesTr")).glob("*.nii.gz"))[:2]]
    fields = {}
    for option in ([], ["--adam", "0"], ["--adam", "10"]):
        out = tmp_path / ("out_" + "_".join(option))
        assert main(["register", *images, "--out", str(out), "--checkpoint", str(path), *option]) == 0
        fields[tuple(option)] = read_displacement(out / "disp.nii.gz", (16, 16, 16))
    assert torch.equal(fields[()], fields[("--adam", "0")])
    assert not torch.allclose(fields[()], fields[("--adam", "10")], atol=1e-3)
    capsys.readouterr()
    for bad in (["--method", "identity", "--adam", "5"], ["--checkpoint", str(path), "--adam", "-1"]):
        out = tmp_path / "refused"
        assert main(["register", *images, "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--adam" in err and not out.exists()


def test_load_checkpoint_returns_training_preprocessing(trained_checkpoint):
    path, _ = trained_checkpoint
    method, ckpt = read_method_checkpoint(path, (RegistrationModule,))
    assert isinstance(rebuild_method(path, method), method)
    prep = recorded_preprocessing(path, ckpt)
    assert prep == Preprocessing((-200.0, 300.0), 0.0, 0.002, 1.0)
    assert prep.image(torch.tensor([[[-1000.0, 0.0, 1000.0]]])).flatten().tolist() == pytest.approx([-0.4, 0.0, 0.6])


def test_checkpoint_without_preprocessing_is_an_input_error(trained_checkpoint, tmp_path, capsys):
    path, phantom = trained_checkpoint
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    del ckpt["preprocessing"]
    stripped = tmp_path / "stripped.ckpt"
    torch.save(ckpt, stripped)
    images = sorted(next(phantom.rglob("imagesTr")).glob("*.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(images[0]), str(images[1]), "--out", str(out), "--checkpoint", str(stripped)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stripped.ckpt: no 'preprocessing' record" in err and not out.exists()


class _Payload:
    """Unpickling this object would create a file: what a crafted checkpoint can do to a plain
    ``torch.load``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "created_by_checkpoint"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, crafted)
    code = main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "out"),
                 "--checkpoint", str(crafted)])
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "crafted.ckpt" in err
    function, arguments = _Payload(marker).__reduce__()  # the payload is real: unpickling it creates the file
    function(*arguments)
    assert marker.exists()
