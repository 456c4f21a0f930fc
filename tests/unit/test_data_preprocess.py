"""Preprocessing keeps world coordinates consistent: pad/crop and resampling update affine and points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regframe.preprocess import Preprocessing, pad_crop_subject, resample_by_factor


def _subject(shape=(6, 8, 4)) -> dict:
    image = torch.arange(float(np.prod(shape))).reshape(1, *shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 3.0]
    return {"id": "s", "image": image, "label": (image > 20).long(), "spacing": torch.full((3,), 2.0),
            "affine": affine, "points": torch.tensor([[1.0, 2.0, 3.0], [4.5, 0.0, 1.0]])}


def _world(affine: np.ndarray, points: torch.Tensor) -> np.ndarray:
    return points.double().numpy() @ affine[:3, :3].T + affine[:3, 3]


def test_intensity_map():
    x = torch.tensor([-1000.0, 0.0, 1000.0])
    assert Preprocessing((-200.0, 300.0), 0.0, 1 / 500).intensity(x).tolist() == pytest.approx([-0.4, 0.0, 0.6])
    assert Preprocessing(None, 1.0, 2.0).intensity(x).tolist() == [-1998.0, 2.0, 2002.0]


def test_pad_crop_keeps_world_positions():
    subject = _subject()
    out = pad_crop_subject(subject, (4, 10, 4))  # crop axis 0 by 2, pad axis 1 by 2
    assert out["image"].shape == (1, 4, 10, 4)
    assert torch.equal(out["image"][0, :, 1:9], subject["image"][0, 1:5])
    assert float(out["image"][0, 0, 0, 0]) == 0.0
    assert torch.equal(out["label"][0, :, 1:9], subject["label"][0, 1:5])
    assert np.allclose(_world(out["affine"], out["points"]), _world(subject["affine"], subject["points"]))
    assert out["spacing"].tolist() == [2.0] * 3


def test_resample_keeps_field_of_view():
    subject = _subject()
    out = resample_by_factor(subject, 0.5)
    assert out["image"].shape == (1, 3, 4, 2) and out["label"].shape == (1, 3, 4, 2)
    assert out["spacing"].tolist() == [4.0] * 3
    assert np.allclose(_world(out["affine"], out["points"]), _world(subject["affine"], subject["points"]))
    # a voxel centre of the new grid maps to the old-grid position (i + 0.5) * 2 - 0.5
    assert np.allclose(_world(out["affine"], torch.zeros(1, 3)), _world(subject["affine"], torch.full((1, 3), 0.5)))
    assert resample_by_factor(subject, 1.0) is subject


def test_pad_crop_odd_difference_leaves_extra_voxel_at_end():
    subject = _subject((7, 8, 4))
    subject["affine"][:3, :3] = [[0.0, -1.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]  # axes swapped, anisotropic
    subject["mask"] = torch.ones_like(subject["label"])
    out = pad_crop_subject(subject, (4, 11, 4))  # crop axis 0 by 3 (1 before, 2 after), pad axis 1 by 3 (1, 2)
    assert torch.equal(out["image"][0, :, 1:9], subject["image"][0, 1:5])
    assert out["mask"][0, :, 0].sum() == 0 and out["mask"][0, :, 9:].sum() == 0 and out["mask"][0, :, 1:9].all()
    assert out["label"].dtype == torch.long and out["image"].dtype == subject["image"].dtype
    assert np.allclose(_world(out["affine"], out["points"]), _world(subject["affine"], subject["points"]))
    # new voxel (0, 1, 0) is old voxel (1, 0, 0)
    assert np.allclose(_world(out["affine"], torch.tensor([[0.0, 1.0, 0.0]])),
                       _world(subject["affine"], torch.tensor([[1.0, 0.0, 0.0]])))
