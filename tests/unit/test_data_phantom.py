"""Synthetic abdomen phantom: determinism, layout, anatomy statistics, data module caching."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from regframe.learn2reg import load_dataset_json
from data_modules.phantom import PhantomDataModule
from regframe.phantom import LABEL_NAMES, write_phantom_dataset

SHAPE = (32, 28, 40)


def _arrays(json_path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    spec = load_dataset_json(json_path)
    images = [np.asarray(nib.load(e.image).dataobj) for e in spec.training]
    labels = [np.asarray(nib.load(e.label).dataobj) for e in spec.training]
    return images, labels


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), subjects=4, shape=SHAPE, seed=1, val_subjects=2)


def test_layout_and_json(phantom: Path):
    assert phantom.name == "Phantom_dataset.json"
    spec = load_dataset_json(phantom)
    assert [e.id for e in spec.training] == ["0001", "0002", "0003", "0004"]
    assert [p.pair_id for p in spec.registration_val] == ["0003_0004"]
    assert spec.label_names == LABEL_NAMES and len(LABEL_NAMES) == 13
    assert spec.label_names[1] == "spleen" and spec.label_names[13] == "left adrenal gland"
    image = nib.load(spec.training[0].image)
    assert image.shape == SHAPE and np.allclose(image.header.get_zooms(), 6.0)


def test_same_seed_identical_other_seed_different(phantom: Path, tmp_path: Path):
    again = write_phantom_dataset(tmp_path / "a", subjects=4, shape=SHAPE, seed=1, val_subjects=2)
    other = write_phantom_dataset(tmp_path / "b", subjects=4, shape=SHAPE, seed=2, val_subjects=2)
    (images, labels), (images2, labels2), (images3, _) = _arrays(phantom), _arrays(again), _arrays(other)
    assert all(np.array_equal(a, b) for a, b in zip(images + labels, images2 + labels2))
    assert not np.array_equal(images[0], images3[0])


def test_ct_like_intensities_and_organs(phantom: Path):
    images, labels = _arrays(phantom)
    for image, label in zip(images, labels):
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image[0, 0, 0] == -1000 and label[0, 0, 0] == 0  # air in the corner
        present = set(np.unique(label).tolist()) - {0}
        assert len(present) >= 10 and present <= set(LABEL_NAMES)
        liver, spleen = np.argwhere(label == 6).mean(0), np.argwhere(label == 1).mean(0)
        assert liver[0] < spleen[0]  # liver on the patient's right (low axis-0 index)
        assert abs(image[label == 8].mean() - 200) < 20  # contrast-filled aorta
        assert -200 < image[(label == 0) & (image > -900)].mean() < 100  # fat / soft tissue


def test_pre_registration_dice_is_low_but_not_zero(phantom: Path):
    _, labels = _arrays(phantom)
    scores = []
    for a, b in itertools.combinations(labels, 2):
        for k in set(np.unique(a)) & set(np.unique(b)) - {0}:
            scores.append(2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)))
    assert 0.1 < float(np.mean(scores)) < 0.5


def test_data_module_writes_once_and_reuses(tmp_path: Path):
    dm = PhantomDataModule(root=str(tmp_path), subjects=3, shape=(12, 10, 14), val_subjects=2,
                           exclude_val_subjects=False)
    dm.setup("fit")
    json_path = tmp_path / "Phantom_dataset.json"
    assert json.loads(json_path.read_text())["regframe_phantom"]["subjects"] == 3
    stamp = json_path.stat().st_mtime_ns
    assert len(dm.train_pairs) == 3 and len(dm.val_pairs) == 1
    batch = next(iter(dm.val_dataloader()))
    assert batch["fixed"].shape == (1, 1, 12, 10, 14)
    assert -0.4 - 1e-6 <= float(batch["fixed"].min()) and float(batch["fixed"].max()) <= 0.6 + 1e-6  # [-200, 300] / 500
    again = PhantomDataModule(root=str(tmp_path), subjects=3, shape=(12, 10, 14), val_subjects=2)
    again.prepare_data()
    assert json_path.stat().st_mtime_ns == stamp
    assert PhantomDataModule(**dm.hparams).phantom_args == dm.phantom_args  # hparams rebuild the module
    changed = PhantomDataModule(root=str(tmp_path), subjects=3, shape=(12, 10, 14), val_subjects=2, seed=5)
    changed.prepare_data()
    assert json.loads(json_path.read_text())["regframe_phantom"]["seed"] == 5


def test_default_root_is_a_parameter_keyed_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REGFRAME_CACHE", str(tmp_path))
    small = dict(subjects=2, shape=(8, 8, 8), val_subjects=2, exclude_val_subjects=False)
    first, second = PhantomDataModule(**small), PhantomDataModule(**small, seed=1)
    first.prepare_data()
    second.prepare_data()
    assert Path(first.dataset_json).parent.parent == tmp_path / "regframe_phantom"
    assert first.dataset_json != second.dataset_json
    assert Path(first.dataset_json).is_file() and Path(second.dataset_json).is_file()
