"""Shared test set-up: offline W&B, small thread count, the real-data folder and tiny volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from regframe.io import write_nifti

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$REGFRAME_SHARED_DATA``); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set REGFRAME_SHARED_DATA to run real-data tests)")
    return SHARED_DATA


@pytest.fixture()
def blob_volume() -> torch.Tensor:
    """A smooth 3-D blob image ``(1, 1, 20, 24, 22)`` with structure along every axis."""
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (20, 24, 22)], indexing="ij"))
    centre = torch.tensor([0.1, -0.15, 0.05]).view(3, 1, 1, 1)
    radius = torch.tensor([0.5, 0.4, 0.6]).view(3, 1, 1, 1)
    r2 = (((grid - centre) / radius) ** 2).sum(0)
    return (torch.exp(-2 * r2) + 0.3 * torch.exp(-8 * ((grid[0] + 0.5) ** 2 + grid[1] ** 2 + (grid[2] - 0.4) ** 2)))[None, None]


@pytest.fixture(scope="session")
def paired_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 cases of 16³ fixed and moving images (uint8 range) with a binary ellipsoid 'gland' at a
    per-case offset, in the ``PairedDataModule`` folder layout (like ``prostate_mr_us``)."""
    root = tmp_path_factory.mktemp("paired_phantom")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij"))
    for case in range(8):
        for side in ("fixed", "moving"):
            centre = np.array([7.5, 7.5, 7.5]) + rng.uniform(-2, 2, 3)
            gland = (((grid - centre[:, None, None, None]) / np.array([5.0, 4.0, 4.5])[:, None, None, None]) ** 2
                     ).sum(0) <= 1
            image = 60 + 120 * gland + rng.normal(0, 5, gland.shape)
            write_nifti(root / f"{side}_images" / f"case{case}.nii.gz", image.astype(np.float32), np.eye(4))
            write_nifti(root / f"{side}_labels" / f"case{case}.nii.gz", gland.astype(np.uint8), np.eye(4))
    return root
