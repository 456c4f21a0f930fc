"""Shared test set-up: offline W&B, small thread count, the real-data folder and tiny volumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
