"""Both SAMConvex experiment configs run end to end on a tiny phantom: two steps of embedding
pre-training, then validation of SAMConvex with the checkpoint it wrote, and ``regframe register
--checkpoint`` with that embedding checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from regframe.cli import RegframeCLI, finish_wandb_run, main
from regframe.features.embedding import PretrainedEmbedding
from regframe.io import read_displacement, read_image
from regframe.methods.samconvex import samconvex_on_raw_images

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SHAPE = (48, 40, 64)


def _phantom_data(root: Path) -> list[str]:
    return ["--data", "data_modules.phantom.PhantomDataModule", "--data.root", str(root / "phantom"),
            "--data.subjects", "4", "--data.shape", json.dumps(list(SHAPE)), "--data.val_subjects", "2",
            "--data.val_max_pairs", "1", "--data.resample_factor", "0.5"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the phantom and ``runs/abdomen_sam_embedding`` after two pre-training steps."""
    root = tmp_path_factory.mktemp("samconvex")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the configs write under ./runs
        main(["fit", "--config", str(EXPERIMENTS / "abdomen_sam_embedding.yaml"), *_phantom_data(root),
              "--trainer.max_steps", "2",
              "--model.init_args.crop_size", "[16, 16, 32]", "--model.init_args.num_points", "16"])
    return root


def _checkpoint(root: Path) -> Path:
    return root / "runs" / "abdomen_sam_embedding" / "checkpoints" / "last.ckpt"


def _scans(root: Path) -> list[Path]:
    return sorted((root / "phantom").rglob("*_0000.nii.gz"))


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_image(path).array).float()[None, None]


def test_embedding_pretraining_then_samconvex_validation(pretrained: Path, monkeypatch):
    assert _checkpoint(pretrained).is_file()
    monkeypatch.chdir(pretrained)  # abdomen_samconvex.yaml reads the checkpoint under ./runs
    cli = RegframeCLI(args=["validate", "--config", str(EXPERIMENTS / "abdomen_samconvex.yaml"), *_phantom_data(pretrained),
                            "--model.init_args.compute_hd95", "false",
                            "--model.init_args.estimator.init_args.radii", "[1, 2, 2]"])
    finish_wandb_run()
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/dice"]) <= 1.0 and "val/fold_pct" in metrics


def test_register_with_an_embedding_checkpoint_runs_samconvex(pretrained: Path, tmp_path: Path):
    """A scan registered to itself: the embedding's unit vectors match best at zero displacement and the
    convex coupling breaks ties towards the smoothed field, so the field is zero and the warped scan the scan."""
    checkpoint, scan = _checkpoint(pretrained), _scans(pretrained)[0]
    assert main(["register", str(scan), str(scan), "--out", str(tmp_path / "self"), "--checkpoint", str(checkpoint)]) == 0
    disp = read_displacement(tmp_path / "self" / "disp.nii.gz", SHAPE)
    assert disp.abs().max() < 1e-3
    np.testing.assert_allclose(read_image(tmp_path / "self" / "warped.nii.gz").array, read_image(scan).array, atol=1e-2)


def test_register_with_an_embedding_checkpoint_equals_the_samconvex_estimator(pretrained: Path, tmp_path: Path):
    checkpoint = _checkpoint(pretrained)
    fixed, moving = _scans(pretrained)[:2]
    assert main(["register", str(fixed), str(moving), "--out", str(tmp_path / "pair"), "--checkpoint", str(checkpoint)]) == 0
    disp = read_displacement(tmp_path / "pair" / "disp.nii.gz", SHAPE)
    with torch.no_grad():
        expected = samconvex_on_raw_images(PretrainedEmbedding(str(checkpoint)))(_tensor(fixed), _tensor(moving))[0]
    assert disp.abs().max() > 0.5  # a real field, not the identity
    torch.testing.assert_close(disp, expected, atol=1e-4, rtol=0)


def test_the_papers_instance_optimisation_refines_the_pyramids_field(pretrained: Path):
    """IO starts from the pyramid's field on the embedding's grid and changes it, each Adam step by at
    most about its learning rate (1 embedding voxel = 4 input voxels here)."""
    embedding = PretrainedEmbedding(str(_checkpoint(pretrained)))
    fixed, moving = (_tensor(path) for path in _scans(pretrained)[:2])
    with torch.no_grad():
        pyramid = samconvex_on_raw_images(embedding)(fixed, moving)
        refined = samconvex_on_raw_images(embedding, io_iterations=5)(fixed, moving)
    change = (refined - pyramid).abs().max()
    assert 1e-2 < change < 5 * 4.0  # 5 steps of at most 1 embedding voxel
    assert torch.isfinite(refined).all()
