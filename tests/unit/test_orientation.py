"""Reorientation by axis permutation and flips: voxels keep their world positions (image, labels,
keypoints), oblique grids are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.io import Volume
from regframe.orientation import (
    Grid,
    axis_transform,
    check_pair_grid,
    reorient_subject,
    reorient_volume,
)

SHAPE = (4, 5, 6)
RAS = np.diag([2.0, 1.0, 3.0, 1.0])


def world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def lps_permuted(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same physical image stored with axes 0 and 1 flipped and axes 0 and 2 swapped."""
    flip = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    return array[::-1, ::-1].transpose(2, 1, 0).copy(), RAS @ flip @ swap


def test_axis_transform_of_known_grids():
    _, affine = lps_permuted(np.zeros(SHAPE))
    np.testing.assert_array_equal(axis_transform(affine, RAS), [[2, 1], [1, -1], [0, -1]])
    np.testing.assert_array_equal(axis_transform(RAS, RAS), [[0, 1], [1, 1], [2, 1]])
    tilted = RAS.copy()
    tilted[:3, :3] = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]]) @ RAS[:3, :3]
    assert axis_transform(tilted, RAS) is None


def test_reoriented_volume_is_the_original_array_and_affine():
    array = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    stored, affine = lps_permuted(array)
    volume = reorient_volume(Volume(stored, affine, "copy.nii.gz"), RAS, "fixed.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, RAS)


def test_subject_points_keep_their_world_position():
    array = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    stored, affine = lps_permuted(array)
    points = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [1.5, 0.25, 3.0]])  # in the stored grid
    subject = {"id": "s", "image": torch.from_numpy(stored)[None], "label": torch.from_numpy(stored.astype(np.int64))[None],
               "spacing": torch.tensor([3.0, 1.0, 2.0]), "affine": affine, "points": points}
    out = reorient_subject(subject, RAS, "copy.nii.gz", "fixed.nii.gz")
    np.testing.assert_array_equal(out["image"][0].numpy(), array)
    np.testing.assert_array_equal(out["label"][0].numpy(), array.astype(np.int64))
    assert out["spacing"].tolist() == [2.0, 1.0, 3.0]
    np.testing.assert_allclose(world(out["affine"], out["points"].numpy()), world(affine, points.numpy()), atol=1e-5)
    assert reorient_subject(out, RAS, "a", "b") is out  # already in the reference orientation


def test_pair_grid_errors_name_the_file():
    stored, affine = lps_permuted(np.zeros(SHAPE))
    check_pair_grid(Grid("fixed.nii.gz", SHAPE, RAS), Grid("copy.nii.gz", stored.shape, affine))
    with pytest.raises(RegframeInputError, match=r"copy.nii.gz: shape \(4, 5, 7\) \(in the fixed orientation\)"):
        check_pair_grid(Grid("fixed.nii.gz", SHAPE, RAS), Grid("copy.nii.gz", (7, 5, 4), affine))
    coarse = affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    with pytest.raises(RegframeInputError, match=r"copy.nii.gz: spacing \(4.0, 1.0, 3.0\) mm"):
        check_pair_grid(Grid("fixed.nii.gz", SHAPE, RAS), Grid("copy.nii.gz", stored.shape, coarse))
