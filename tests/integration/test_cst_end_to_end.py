"""CST end to end: the demo config runs all its stages (labels refreshed, table printed), and CST trains
other networks (a MONAI feature network; a U-Net regressor with MIND-feature IO) through YAML."""

from pathlib import Path

import torch

from regframe.cli import RegframeCLI, main

ROOT = Path(__file__).resolve().parents[2]
ICE = "--model.init_args.estimator.init_args.estimator.init_args.first.init_args"
TINY_NET = [f"{ICE}.estimator.init_args.feature_net.init_args.channels=[4,8,8,8,8,8]",
            f"{ICE}.estimator.init_args.radius=1",
            f"{ICE}.iterations=2",
            "--model.init_args.estimator.init_args.io.init_args.iterations=2",
            "--model.init_args.compute_hd95=false"]


def tiny_phantom(tmp_path: Path) -> list[str]:
    return [f"--data.init_args.root={tmp_path / 'phantom'}", "--data.init_args.subjects=5",
            "--data.init_args.val_subjects=2", "--data.init_args.shape=[32,32,32]", "--data.init_args.spacing=12.0",
            "--data.init_args.val_max_pairs=1", f"--trainer.default_root_dir={tmp_path}"]


def test_cst_demo_config_runs_all_stages(tmp_path, capsys):
    args = ["fit", f"--config={ROOT / 'experiments' / 'abdomen_cst.yaml'}",
            f"--config={ROOT / 'experiments' / 'demo.yaml'}", *TINY_NET, *tiny_phantom(tmp_path),
            "--model.init_args.stages=2", "--model.init_args.epochs_per_stage=1", "--model.init_args.loss_crop=1",
            f"--model.init_args.pseudo_label_dir={tmp_path / 'pl'}", "--trainer.enable_model_summary=false"]
    cli = RegframeCLI(args=args)
    # max_epochs, validation and reloads follow the overridden stage plan (2 x 1) without trainer overrides
    assert (cli.trainer.max_epochs, cli.trainer.check_val_every_n_epoch) == (2, 1)
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1
    assert cli.trainer.current_epoch == 2
    # the LR restarts every stage: 3 training pairs at batch 2 = 2 steps per (one-epoch) stage
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert (type(scheduler).__name__, scheduler.T_0, scheduler.eta_min, scheduler.base_lrs) == (
        "CosineAnnealingWarmRestarts", 2, 1e-5, [1e-3])
    assert cli.model.store.stage == 1  # labels of stage 0 (random) and stage 1 (after the first stage)
    assert sorted(cli.model.stage_dice) == [0, 1, 2]
    assert cli.trainer.datamodule.sampler_weights is not None
    assert "| stage | val Dice |" in capsys.readouterr().out


def _one_stage(tmp_path: Path, backbone: str, *overrides: str) -> RegframeCLI:
    args = ["fit", f"--config={ROOT / 'experiments' / 'abdomen_cst.yaml'}",
            f"--config={ROOT / 'experiments' / 'demo.yaml'}", f"--config={ROOT / 'experiments' / 'backbones' / backbone}",
            *overrides, "--model.init_args.estimator.init_args.io.init_args.iterations=2",
            "--model.init_args.compute_hd95=false", *tiny_phantom(tmp_path), "--model.init_args.stages=1",
            "--model.init_args.epochs_per_stage=1", "--model.init_args.loss_crop=1",
            f"--model.init_args.pseudo_label_dir={tmp_path / 'pl'}", "--trainer.check_val_every_n_epoch=1",
            "--trainer.reload_dataloaders_every_n_epochs=1", "--trainer.logger=false",
            "--trainer.enable_model_summary=false"]
    return RegframeCLI(args=args)


def test_cst_with_monai_feature_network(tmp_path):
    from monai.networks.nets import BasicUNet

    from regframe.estimators.protocols import trained_network

    cli = _one_stage(tmp_path, "cst_monai_features.yaml",
                     f"{ICE}.estimator.init_args.feature_net.init_args.network.init_args.features=[4,4,8,8,8,4]",
                     f"{ICE}.estimator.init_args.radius=1", f"{ICE}.iterations=2")
    network = trained_network(cli.model.estimator)
    assert isinstance(network.feature_net.network, BasicUNet)
    assert cli.trainer.current_epoch == 1 and sorted(cli.model.stage_dice) == [0, 1]
    labels = cli.model.store.read(range(3))
    assert labels.shape == (3, 3, 16, 16, 16) and labels.abs().max() > 0  # half-resolution stage-0 labels that move


def test_cst_with_unet_regressor_and_mind_io(tmp_path):
    from regframe.estimators.protocols import trained_network
    from regframe.estimators.unet_regressor import UNetRegressor
    from regframe.features.mind import MINDSSC

    cli = _one_stage(tmp_path, "cst_unet_regressor.yaml")
    assert isinstance(trained_network(cli.model.estimator), UNetRegressor)
    assert isinstance(cli.model.estimator.io.features, MINDSSC)
    assert cli.trainer.current_epoch == 1 and sorted(cli.model.stage_dice) == [0, 1]
    assert cli.model.store.read(range(3)).abs().max() > 0  # the random regressor is ~identity: IO moved the labels


def test_loss_crop_larger_than_the_label_grid_stops_before_training(tmp_path, monkeypatch, capsys):
    """abdomen_cst_cpu.yaml (half-resolution images, labels on their grid, crop 8, checkpoints) on a
    32³ phantom: the crop leaves nothing, so the loss would be NaN with zero gradients; the run stops
    with one line before any pseudo label, step or checkpoint."""
    monkeypatch.chdir(tmp_path)
    configs = [ROOT / "experiments" / "abdomen_cst.yaml", ROOT / "experiments" / "abdomen_cst_cpu.yaml",
               ROOT / "tests" / "conf" / "abdomen_cst_cpu.yaml"]
    args = ["fit", *[f"--config={c}" for c in configs], f"--data.init_args.root={tmp_path / 'phantom'}",
            "--data.init_args.shape=[32,32,32]", "--model.init_args.loss_crop=8"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert ("regframe fit: error: model.init_args.loss_crop=8 crops away the whole label grid (16, 16, 16) "
            "(image grid (16, 16, 16) x label_resample_factor 1.0); use at most 7") in error.splitlines()
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("manifest.json"))


def test_cpu_config_checkpoint_registers_new_scans_at_full_resolution(tmp_path, monkeypatch):
    """abdomen_cst_cpu.yaml trains at half resolution; its checkpoint registers two scans it never saw
    (new phantom subjects) with ``regframe register --checkpoint``: a finite, non-zero field is written
    on the scans' full 32³ grid (the network ran on the 16³ half-resolution grid it was trained on)."""
    from regframe.io import read_displacement
    from regframe.phantom import write_phantom_dataset

    monkeypatch.chdir(tmp_path)
    configs = [ROOT / "experiments" / "abdomen_cst.yaml", ROOT / "experiments" / "abdomen_cst_cpu.yaml",
               ROOT / "tests" / "conf" / "abdomen_cst_cpu.yaml"]
    args = ["fit", *[f"--config={c}" for c in configs], f"--data.init_args.root={tmp_path / 'phantom'}",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--model.init_args.compute_hd95=false"]
    assert main(args) == 0
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    write_phantom_dataset(tmp_path / "unseen", subjects=2, shape=(32, 32, 32), spacing=12.0, seed=99, val_subjects=2)
    images = sorted((tmp_path / "unseen").rglob("imagesTr/*.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(images[0]), str(images[1]), "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    disp = read_displacement(out / "disp.nii.gz", (32, 32, 32))
    assert disp.shape == (3, 32, 32, 32) and torch.isfinite(disp).all() and disp.abs().max() > 0.1
