"""Shared test set-up: offline W&B, small thread count, the real-data folder and tiny volumes."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

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


def write_fake_acdc_patient(folder: Path, ed: int = 1, es: int = 5, shape=(40, 36, 4),
                            spacing=(1.5, 1.25, 8.0)) -> None:
    """One ACDC-layout patient: ``Info.cfg`` and ED/ES frames with labels (int16 images). Rings of
    myocardium (2) around the LV cavity (3), an RV blob (1); ES contracted; the last slice (apex) empty."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    rng = np.random.default_rng(len(folder.name) + int(folder.name[-3:]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
    centre = np.array([21.0, 17.0]) + rng.uniform(-2, 2, 2)
    for frame, radius in ((ed, 9.0), (es, 7.0)):
        label = np.zeros(shape, dtype=np.uint8)
        r = np.hypot(x - centre[0], y - centre[1])
        for z in range(shape[2] - 1):
            label[..., z][r <= radius] = 2
            label[..., z][r <= radius - 3] = 3
            label[..., z][np.hypot(x - centre[0] + radius + 4, y - centre[1]) <= 3] = 1
        image = np.choose(label, [20, 180, 80, 200]) + rng.normal(0, 4, shape)
        affine = np.diag([*spacing, 1.0])
        write_nifti(folder / f"{folder.name}_frame{frame:02d}.nii.gz", image.astype(np.int16), affine)
        write_nifti(folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz", label, affine)


@pytest.fixture()
def acdc_patient_writer():
    """:func:`write_fake_acdc_patient`, for tests that build their own patients."""
    return write_fake_acdc_patient


@pytest.fixture(scope="session")
def fake_acdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ACDC root: ``training/`` with patients 001-004 and ``testing/`` with 101-102."""
    root = tmp_path_factory.mktemp("acdc")
    for number in (1, 2, 3, 4):
        write_fake_acdc_patient(root / "training" / f"patient{number:03d}")
    for number in (101, 102):
        write_fake_acdc_patient(root / "testing" / f"patient{number:03d}")
    return root


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loader of a script of ``benchmarks/`` by name (``"jrss_benchmark"``) as a module, each loaded once;
    ``benchmarks/`` is on ``sys.path`` as when the script runs, so sibling imports work."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if str(REPO_ROOT / "benchmarks") not in sys.path:
            sys.path.append(str(REPO_ROOT / "benchmarks"))
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
