"""Förstner keypoints: corners of a synthetic square / cube, the mask, NMS and the point cap."""

from __future__ import annotations

import itertools

import pytest
import torch

from regframe.features.keypoints import erode, foerstner_distinctiveness, foerstner_keypoints


def _corners(box: list[tuple[int, int]]) -> torch.Tensor:
    """Corner voxels (first and last voxel inside) of a box given as ``[start, stop)`` per axis."""
    return torch.tensor(list(itertools.product(*[(start, stop - 1) for start, stop in box])), dtype=torch.float32)


def _box_image(shape: tuple[int, ...], box: list[tuple[int, int]], value: float) -> torch.Tensor:
    image = torch.zeros(shape)
    image[tuple(slice(start, stop) for start, stop in box)] = value
    return image


def _match(found: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Distance (voxels, largest per-axis difference) from each expected point to the nearest found one."""
    return torch.cdist(expected, found, p=float("inf")).min(dim=1).values


@pytest.mark.parametrize(("shape", "box"), [((40, 40), [(10, 25), (12, 30)]),
                                            ((32, 34, 30), [(8, 20), (10, 24), (9, 22)])])
def test_corners_of_a_bright_box_are_the_keypoints(shape, box):
    keypoints = foerstner_keypoints(_box_image(shape, box, 100.0))
    expected = _corners(box)
    assert keypoints.shape == expected.shape  # 4 corners in 2D, 8 in 3D, nothing else
    assert _match(keypoints, expected).max() <= 1.0


def test_nothing_outside_the_mask_is_returned():
    box = [(8, 20), (10, 24), (9, 22)]
    mask = torch.zeros(32, 34, 30, dtype=torch.bool)
    mask[:15] = True  # holds the 4 corners with x = 8, the others lie outside
    keypoints = foerstner_keypoints(_box_image((32, 34, 30), box, 1.0), mask)
    expected = _corners(box)[:4]
    assert keypoints.shape == (4, 3)
    assert (keypoints[:, 0] < 15 - 1).all()  # inside the eroded mask
    assert _match(keypoints, expected).max() <= 1.0


def test_flat_regions_edges_and_faces_are_not_distinctive():
    # a half-space: only faces (rank-1 structure tensor) -> zero distinctiveness, no keypoints
    image = torch.zeros(20, 20, 20)
    image[10:] = 1.0
    assert foerstner_distinctiveness(image).abs().max() < 1e-9
    assert len(foerstner_keypoints(image)) == 0
    # an infinite bar in 3D: edges (rank 2) only
    image = torch.zeros(20, 20, 20)
    image[5:12, 6:14, :] = 1.0
    assert len(foerstner_keypoints(image)) == 0


def test_max_points_keeps_the_most_distinctive():
    image = _box_image((40, 40), [(10, 25), (12, 30)], 10.0)
    image[30:35, 30:35] = 100.0  # a brighter square: its corners are 100x more distinctive
    everything = foerstner_keypoints(image, nms_window=3)
    strongest = foerstner_keypoints(image, nms_window=3, max_points=4)
    assert len(everything) == 8
    assert _match(strongest, _corners([(30, 35), (30, 35)])).max() <= 1.0


def test_erosion_known_answer():
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 1:8] = True
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[3:6, 2:7] = True
    assert torch.equal(erode(mask, 1), expected)
    assert torch.equal(erode(mask, 0), mask)


def test_even_nms_window_is_rejected():
    with pytest.raises(ValueError, match="nms_window"):
        foerstner_keypoints(torch.zeros(8, 8), nms_window=4)
