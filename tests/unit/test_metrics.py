"""Metrics cross-checked against independent numpy/scipy references on tiny seeded inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.distance import cdist

from regframe.metrics import (aggregate, dice_per_label, hd95_per_label, jacobian_metrics, labels_present,
                              pair_metrics, tre)
from regframe.spatial import jacobian_determinant, warp_labels

SHAPES = {2: (23, 19), 3: (13, 11, 9)}


def blobby_labels(shape, n_labels, seed):
    """Smooth random label map: arg-max of blurred noise, so labels form compact regions."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((n_labels + 1, *shape)), sigma=(0,) + (1.5,) * len(shape))
    return noise.argmax(0).astype(np.int64)


def smooth_field(shape, amplitude, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((len(shape), *shape)), sigma=(0,) + (sigma,) * len(shape))
    return amplitude * field / np.abs(field).max()


# ---- independent references -------------------------------------------------------------------

def ref_dice(fixed, warped, label):
    a = {tuple(i) for i in np.argwhere(fixed == label)}
    b = {tuple(i) for i in np.argwhere(warped == label)}
    return 2 * len(a & b) / (len(a) + len(b))


def ref_contour_elements(mask, spacing):
    """Marching-squares contour of a 2D mask: each 2x2 cell of the zero-padded mask whose corners
    disagree, as a position (mm) and the contour length through it."""
    p = np.pad(mask.astype(bool), 1)
    a, b, c, d = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]  # corners (i,j) (i,j+1) (i+1,j) (i+1,j+1)
    half_diagonal = 0.5 * math.hypot(*spacing)
    count = a.astype(int) + b + c + d
    length = np.where((count == 1) | (count == 3), half_diagonal, 0.0)
    two = count == 2
    length[two & (a == b)] = spacing[1]  # the cut crosses axis 0 and runs along axis 1
    length[two & (a == c)] = spacing[0]
    length[two & (a == d)] = 2 * half_diagonal  # saddle: two corner cuts
    border = (count > 0) & (count < 4)
    return np.argwhere(border) * np.asarray(spacing), length[border]


def ref_hd95_2d(fixed, warped, label, spacing):
    """Learn2Reg's HD95 in 2D by brute force: length-weighted 95th percentile of contour distances."""
    def directed(src, weight, dst):
        d = cdist(src, dst).min(1)
        order = np.argsort(d, kind="stable")
        cumulative = np.cumsum(weight[order]) / weight.sum()
        return d[order][min(np.searchsorted(cumulative, 0.95), len(d) - 1)]

    pf, wf = ref_contour_elements(fixed == label, spacing)
    pw, ww = ref_contour_elements(warped == label, spacing)
    return max(directed(pf, wf, pw), directed(pw, ww, pf))


def ref_jacobian(disp):
    """det(I + grad u) by numpy.gradient (central differences inside), cropped 2 voxels."""
    dims = disp.shape[0]
    jac = np.empty(disp.shape[1:] + (dims, dims))
    for c in range(dims):
        for a, g in enumerate(np.gradient(disp[c])):
            jac[..., c, a] = g + (c == a)
    return np.linalg.det(jac)[(slice(2, -2),) * dims]


def ref_jacobian_zero_padded(disp):
    """Learn2Reg's construction: correlate with [-0.5, 0, 0.5] zero-padded on the full grid, crop 2."""
    dims = disp.shape[0]
    jac = np.empty(disp.shape[1:] + (dims, dims))
    for a in range(dims):
        kernel = np.array([-0.5, 0.0, 0.5]).reshape([3 if i == a else 1 for i in range(dims)])
        for c in range(dims):
            jac[..., c, a] = ndi.correlate(disp[c], kernel, mode="constant", cval=0.0) + (c == a)
    return np.linalg.det(jac)[(slice(2, -2),) * dims]


# ---- Dice ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_dice_matches_set_reference(dims):
    fixed = blobby_labels(SHAPES[dims], 5, seed=dims)
    warped = blobby_labels(SHAPES[dims], 5, seed=dims + 10)
    labels = labels_present(torch.from_numpy(fixed), torch.from_numpy(warped))
    assert labels == sorted(set(np.unique(fixed)) & set(np.unique(warped)) - {0})
    dice = dice_per_label(torch.from_numpy(fixed)[None, None], torch.from_numpy(warped), labels)
    assert set(dice) == set(labels)
    for label in labels:
        assert dice[label] == pytest.approx(ref_dice(fixed, warped, label), abs=1e-12)


def test_labels_present_excludes_labels_missing_in_moving_and_background():
    fixed = torch.tensor([[0, 1, 2], [3, 3, 0]])
    moving = torch.tensor([[0, 0, 2], [3, 5, 0]])
    assert labels_present(fixed, moving) == [2, 3]


def test_identical_labels_give_dice_one():
    fixed = torch.from_numpy(blobby_labels(SHAPES[3], 4, seed=1))
    dice = dice_per_label(fixed, fixed.clone(), labels_present(fixed, fixed))
    assert dice and all(value == 1.0 for value in dice.values())


# ---- HD95 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.9)])
def test_hd95_2d_matches_brute_force_contour_reference(spacing):
    fixed = blobby_labels(SHAPES[2], 3, seed=22)
    warped = blobby_labels(SHAPES[2], 3, seed=32)
    labels = labels_present(torch.from_numpy(fixed), torch.from_numpy(warped))
    hd = hd95_per_label(torch.from_numpy(fixed), torch.from_numpy(warped)[None, None], labels, spacing)
    for label in labels:
        assert hd[label] == pytest.approx(ref_hd95_2d(fixed, warped, label, spacing), rel=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_hd95_matches_learn2reg_surface_distance_package(dims):
    """Learn2Reg's own HD95 code path (DeepMind surface_distance), where that package is installed."""
    surface_distance = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(dims)
    fixed = blobby_labels(SHAPES[dims], 3, seed=23 + dims)
    warped = blobby_labels(SHAPES[dims], 3, seed=33 + dims)
    spacing = tuple(rng.uniform(0.5, 3.0, dims))
    labels = labels_present(torch.from_numpy(fixed), torch.from_numpy(warped))
    hd = hd95_per_label(torch.from_numpy(fixed), torch.from_numpy(warped), labels, spacing)
    for label in labels:
        distances = surface_distance.compute_surface_distances(fixed == label, warped == label, np.array(spacing))
        assert hd[label] == pytest.approx(surface_distance.compute_robust_hausdorff(distances, 95.0), rel=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_hd95_identical_is_zero_and_shifted_box_is_the_shift(dims):
    shape, box = (14,) * dims, (slice(4, 10),) * dims
    fixed = np.zeros(shape, dtype=np.int64)
    fixed[box] = 1
    shifted = np.roll(fixed, 2, axis=1)
    spacing = (1.0, 3.0, 1.0)[:dims]
    assert hd95_per_label(torch.from_numpy(fixed), torch.from_numpy(fixed), [1], spacing)[1] == 0.0
    # the face left behind is 2 voxels (6 mm) from the moved box and holds > 5 % of the surface
    assert hd95_per_label(torch.from_numpy(fixed), torch.from_numpy(shifted), [1], spacing)[1] == pytest.approx(6.0)
    assert hd95_per_label(torch.from_numpy(shifted), torch.from_numpy(fixed), [1], None)[1] == pytest.approx(2.0)


def test_hd95_vanished_label_gets_grid_diagonal_and_absent_fixed_label_nan():
    fixed = torch.zeros(9, 7, 5, dtype=torch.long)
    fixed[2:5, 2:5, 1:3] = 1
    warped = torch.zeros_like(fixed)
    warped[0, 0, 0] = 2
    spacing = (1.0, 2.0, 3.0)
    hd = hd95_per_label(fixed, warped, [1, 2], spacing)
    assert hd[1] == pytest.approx(math.sqrt((8 * 1.0) ** 2 + (6 * 2.0) ** 2 + (4 * 3.0) ** 2))
    assert math.isnan(hd[2])


# ---- Jacobian -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_jacobian_metrics_match_numpy_gradient_reference(dims):
    disp = smooth_field(SHAPES[dims], amplitude=4.0, seed=dims, sigma=1.0)  # rough enough to fold somewhere
    det = ref_jacobian(disp)
    np.testing.assert_allclose(det, ref_jacobian_zero_padded(disp), atol=1e-12)  # the 2-voxel crop is exact
    out = jacobian_metrics(torch.from_numpy(disp))  # float64 in, float64 arithmetic
    assert (det <= 0).any() and (det > 0).any()
    assert out["fold_pct"] == pytest.approx(100.0 * (det <= 0).mean(), abs=1e-12)
    assert out["sdlogj"] == pytest.approx(np.log(det[det > 0]).std(), rel=1e-9)
    assert out["sdlogj_l2r"] == pytest.approx(np.log(np.clip(det + 3, 1e-9, 1e9)).std(), rel=1e-9)
    assert out["std_jac"] == pytest.approx(det.std(), rel=1e-9)
    single = jacobian_metrics(torch.from_numpy(disp).float()[None])  # float32 in: same up to rounding
    for key in out:
        assert single[key] == pytest.approx(out[key], rel=1e-5)


def test_jacobian_crop_agrees_with_spatial_jacobian():
    disp = torch.from_numpy(smooth_field(SHAPES[3], 1.0, seed=5))[None]
    det = jacobian_determinant(disp)[0, 1:-1, 1:-1, 1:-1].numpy()
    np.testing.assert_allclose(det, ref_jacobian(disp[0].numpy()), atol=1e-12)


def test_zero_and_affine_fields_have_no_spread_and_no_folds():
    zero = jacobian_metrics(torch.zeros(1, 3, 9, 8, 7))
    assert zero["fold_pct"] == 0.0 and zero["sdlogj"] == 0.0 and zero["sdlogj_l2r"] == pytest.approx(0.0, abs=1e-12)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (9, 8)], indexing="ij"))
    scaled = jacobian_metrics(0.1 * grid)  # det = 1.21 everywhere
    assert scaled["fold_pct"] == 0.0 and scaled["sdlogj"] == pytest.approx(0.0, abs=1e-12)
    assert scaled["std_jac"] == pytest.approx(0.0, abs=1e-12)


def test_std_jac_of_a_quadratic_field_is_known():
    # u_x = a x² (central differences are exact): det = 1 + 2 a x on the 2-voxel-cropped interior
    a, size = 0.01, 11
    x = torch.arange(size, dtype=torch.float64)
    disp = torch.zeros(2, size, 7, dtype=torch.float64)
    disp[0] = (a * x**2)[:, None]
    inner = 1.0 + 2.0 * a * x[2:-2]
    assert jacobian_metrics(disp)["std_jac"] == pytest.approx(float(inner.std(correction=0)), rel=1e-12)


def test_known_fold_is_counted():
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (12, 10, 8)], indexing="ij"))
    disp = torch.zeros(3, 12, 10, 8, dtype=torch.float64)
    disp[0] = -2.0 * grid[0]  # d(x + u)/dx = -1: the whole grid is mirrored, det = -1
    out = jacobian_metrics(disp)
    assert out["fold_pct"] == 100.0 and math.isnan(out["sdlogj"])
    disp[0, :6] = 0.0  # fold only where x >= 6 (plus the seam)
    out = jacobian_metrics(disp)
    det = ref_jacobian(disp.numpy())
    assert 0.0 < out["fold_pct"] < 100.0
    assert out["fold_pct"] == pytest.approx(100.0 * (det <= 0).mean())


# ---- TRE ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_tre_matches_linear_interpolation_reference(dims):
    rng = np.random.default_rng(dims)
    shape = SHAPES[dims]
    disp = smooth_field(shape, 3.0, seed=7 + dims)
    fixed_points = rng.uniform(0, np.array(shape) - 1, size=(6, dims))
    moving_points = fixed_points + rng.normal(size=(6, dims))
    spacing = rng.uniform(0.5, 2.0, size=dims)
    sampled = np.stack([map_coordinates(disp[c], fixed_points.T, order=1) for c in range(dims)], axis=1)
    expected = np.linalg.norm((fixed_points + sampled - moving_points) * spacing, axis=1)
    got = tre(torch.from_numpy(fixed_points), torch.from_numpy(moving_points), torch.from_numpy(disp), spacing)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_tre_of_constant_shift_by_hand():
    disp = torch.zeros(1, 3, 6, 7, 8)
    disp[:, 0], disp[:, 1], disp[:, 2] = 1.0, -2.0, 0.5
    points = torch.tensor([[1.0, 2.0, 3.0], [4.5, 0.0, 6.25]])
    assert torch.allclose(tre(points, points + torch.tensor([1.0, -2.0, 0.5]), disp, (2, 2, 2)),
                          torch.zeros(2, dtype=torch.float64))
    expected = math.sqrt((1.0 * 1.5) ** 2 + (2.0 * 1.0) ** 2 + (0.5 * 3.0) ** 2)
    assert torch.allclose(tre(points, points, disp, (1.5, 1.0, 3.0)), torch.full((2,), expected, dtype=torch.float64))


# ---- pair_metrics and aggregate -----------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_pair_metrics_known_answers_and_keys(dims):
    fixed = torch.from_numpy(blobby_labels(SHAPES[dims], 4, seed=40 + dims))
    out = pair_metrics(fixed[None, None], fixed, torch.zeros(1, dims, *SHAPES[dims]), spacing=(2.0,) * dims)
    assert {"dice", "dice_per_label", "hd95", "hd95_vox", "hd95_per_label", "sdlogj_l2r", "sdlogj",
            "fold_pct"} <= set(out)
    assert out["dice"] == 1.0 and out["hd95"] == 0.0 and out["fold_pct"] == 0.0 and out["sdlogj"] == 0.0
    assert set(out["dice_per_label"]) == set(labels_present(fixed, fixed))


def test_pair_metrics_warps_moving_and_matches_parts():
    fixed = torch.from_numpy(blobby_labels(SHAPES[3], 4, seed=50))
    moving = torch.from_numpy(blobby_labels(SHAPES[3], 4, seed=51))
    moving[moving == 3] = 0  # label 3 only in fixed: not evaluated
    disp = torch.from_numpy(smooth_field(SHAPES[3], 1.5, seed=52)).float()[None]
    spacing = (1.0, 2.0, 1.5)
    out = pair_metrics(fixed, moving, disp, spacing, fixed_points=torch.tensor([[3.0, 4.0, 5.0]]),
                       moving_points=torch.tensor([[4.0, 4.0, 5.0]]))
    warped = warp_labels(moving[None, None], disp)[0, 0]
    labels = labels_present(fixed, moving)
    assert 3 not in labels and set(out["dice_per_label"]) == set(labels)
    assert out["dice"] == pytest.approx(np.mean([ref_dice(fixed.numpy(), warped.numpy(), lab) for lab in labels]))
    assert out["hd95"] == pytest.approx(np.mean(list(hd95_per_label(fixed, warped, labels, spacing).values())))
    vox = np.mean(list(hd95_per_label(fixed, warped, labels, None).values()))  # anisotropic: recomputed
    assert out["hd95_vox"] == pytest.approx(vox) and out["hd95_vox"] != pytest.approx(out["hd95"])
    assert out["tre"] == pytest.approx(tre([[3.0, 4.0, 5.0]], [[4.0, 4.0, 5.0]], disp, spacing).item())
    restricted = pair_metrics(fixed, moving, disp, spacing, labels=[1, 3], hd95=False)
    assert set(restricted["dice_per_label"]) == {1} and "hd95" not in restricted


def test_aggregate_statistics_by_hand():
    cases = [{"dice": d, "fold_pct": f, "dice_per_label": {1: d}, "pair": "x"}
             for d, f in [(0.5, 0.0), (0.7, 1.0), (0.1, float("nan")), (0.9, 3.0), (0.3, 2.0)]]
    out = aggregate(cases)
    assert set(out) == {"dice", "fold_pct"}
    values = np.array([0.5, 0.7, 0.1, 0.9, 0.3])
    assert out["dice"]["mean"] == pytest.approx(values.mean())
    assert out["dice"]["std"] == pytest.approx(values.std(ddof=1))
    assert out["dice"]["p30"] == pytest.approx(0.3 + 0.2 * (0.5 - 0.3))  # rank 1.2 of the sorted values
    assert out["dice"]["low30_mean"] == pytest.approx((0.1 + 0.3) / 2)  # ceil(0.3 * 5) = 2 lowest
    assert out["fold_pct"]["n"] == 4 and out["fold_pct"]["mean"] == pytest.approx(1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_metrics_accept_gpu_tensors():
    fixed = torch.from_numpy(blobby_labels(SHAPES[3], 4, seed=60)).cuda()
    moving = torch.from_numpy(blobby_labels(SHAPES[3], 4, seed=61)).cuda()
    disp = torch.from_numpy(smooth_field(SHAPES[3], 1.0, seed=62)).float().cuda()
    on_gpu = pair_metrics(fixed, moving, disp, (1.0, 1.0, 2.0))
    on_cpu = pair_metrics(fixed.cpu(), moving.cpu(), disp.cpu(), (1.0, 1.0, 2.0))
    for key in ("dice", "hd95", "sdlogj_l2r", "sdlogj", "fold_pct"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-6, abs=1e-9)
