"""Hausdorff and average surface distances (MONAI) against a brute-force scipy reference, and the
``metric_labels`` / ``surface_distances`` switches of ``pair_metrics``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from regframe.metrics import pair_metrics, surface_distances_per_label


def boundary_points(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Voxels of ``mask`` with a background 4-neighbour (mask minus its erosion), in mm."""
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(edge) * np.asarray(spacing)


def reference(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    d = cdist(boundary_points(a, spacing), boundary_points(b, spacing))
    ab, ba = d.min(1), d.min(0)
    return max(ab.max(), ba.max()), (ab.sum() + ba.sum()) / (len(ab) + len(ba))


def disc(centre: tuple[float, float], radius: float, shape=(40, 36)) -> np.ndarray:
    y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


def test_shifted_square_has_the_shift_as_hausdorff_distance():
    fixed = np.zeros((30, 30), dtype=np.int64)
    fixed[8:18, 8:18] = 2
    warped = np.roll(fixed, 3, axis=0)
    hd, _ = surface_distances_per_label(fixed, warped, [2])[2]
    assert hd == pytest.approx(3.0)
    hd_mm, _ = surface_distances_per_label(fixed, warped, [2], spacing=(2.0, 1.0))[2]
    assert hd_mm == pytest.approx(6.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.5, 0.7)])
def test_distances_match_a_brute_force_reference(spacing):
    a, b = disc((18, 17), 9), disc((21, 15), 7)
    fixed, warped = 2 * a.astype(np.int64), 2 * b.astype(np.int64)
    hd, asd = surface_distances_per_label(fixed, warped, [2], spacing)[2]
    ref_hd, ref_asd = reference(a, b, spacing)
    assert hd == pytest.approx(ref_hd, rel=1e-5) and asd == pytest.approx(ref_asd, rel=1e-5)


def test_vanished_label_gets_the_diagonal_and_absent_label_nan():
    fixed = np.zeros((11, 21), dtype=np.int64)
    fixed[3:6, 3:6] = 2
    result = surface_distances_per_label(fixed, np.zeros_like(fixed), [2, 3])
    assert result[2] == (pytest.approx(math.hypot(10, 20)),) * 2
    assert all(math.isnan(v) for v in result[3])


def test_pair_metrics_scores_only_the_metric_labels_with_distances_in_voxels_and_mm():
    fixed = np.zeros((32, 32), dtype=np.int64)
    fixed[4:12, 4:12] = 1
    fixed[16:26, 16:26] = 2
    moving = np.zeros_like(fixed)
    moving[4:12, 4:12] = 1
    moving[18:28, 16:26] = 2  # myocardium shifted by 2 voxels along axis 0, label 1 in place
    disp = torch.zeros(1, 2, 32, 32)
    m = pair_metrics(fixed, moving, disp, spacing=(1.5, 1.5), labels=[2], hd95=False, surface_distances=True)
    assert list(m["dice_per_label"]) == [2] and m["dice"] == pytest.approx(2 * 80 / 200)
    assert m["hd"] == pytest.approx(2.0) and m["hd_mm"] == pytest.approx(3.0)
    assert m["asd_mm"] == pytest.approx(1.5 * m["asd"]) and 0 < m["asd"] < 2
    assert "hd" not in pair_metrics(fixed, moving, disp, labels=[2], hd95=False)
