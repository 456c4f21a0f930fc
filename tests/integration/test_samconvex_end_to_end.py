"""Both SAMConvex experiment configs run end to end on a tiny phantom: two steps of embedding
pre-training, then validation of SAMConvex with the checkpoint it wrote."""

from __future__ import annotations

from pathlib import Path

from regframe.cli import RegframeCLI, finish_wandb_run, main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _phantom_data(tmp_path: Path) -> list[str]:
    return ["--data", "data_modules.phantom.PhantomDataModule", "--data.root", str(tmp_path / "phantom"),
            "--data.subjects", "4", "--data.shape", "[48, 40, 64]", "--data.val_subjects", "2",
            "--data.val_max_pairs", "1", "--data.resample_factor", "0.5"]


def test_embedding_pretraining_then_samconvex_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs write under ./runs
    main(["fit", "--config", str(EXPERIMENTS / "abdomen_sam_embedding.yaml"), *_phantom_data(tmp_path),
          "--trainer.max_steps", "2",
          "--model.init_args.crop_size", "[16, 16, 32]", "--model.init_args.num_points", "16"])
    checkpoint = tmp_path / "runs" / "abdomen_sam_embedding" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    cli = RegframeCLI(args=["validate", "--config", str(EXPERIMENTS / "abdomen_samconvex.yaml"), *_phantom_data(tmp_path),
                            "--model.init_args.compute_hd95", "false",
                            "--model.init_args.estimator.init_args.radii", "[1, 2, 2]"])
    finish_wandb_run()
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/dice"]) <= 1.0 and "val/fold_pct" in metrics
