"""Known-answer tests of the optimisation blocks (correlation, convex, ICE, Adam IO, upsampling)."""

import pytest
import torch

from regframe.optim import (
    adam_instance_optimisation,
    box_filter,
    cost_volume,
    displacement_offsets,
    hard_coupled_convex,
    inverse_consistent,
    soft_coupled_convex,
    upsample_field,
)
from regframe.optim.smoothing import valid_box_mean
from regframe.spatial import identity_grid, warp


def smooth_features(shape, channels=4, seed=0, smoothing=1):
    gen = torch.Generator().manual_seed(seed)
    return box_filter(torch.rand(1, channels, *shape, generator=gen), smoothing)


def interior(x, margin=3):
    return x[(slice(None), slice(None)) + (slice(margin, -margin),) * (x.dim() - 2)]


def test_offsets_order_and_centre():
    off = displacement_offsets(2, 3)
    assert off.shape == (125, 3)
    assert off[62].abs().sum() == 0
    assert off[0].tolist() == [-2, -2, -2] and off[1].tolist() == [-2, -2, -1]


@pytest.mark.parametrize("metric", ["sad", "ssd", "neg_dot"])
def test_cost_volume_minimum_at_true_shift(metric):
    fixed = smooth_features((10, 9, 11))
    shift = (1, -2, 0)
    moving = torch.roll(fixed, shifts=shift, dims=(2, 3, 4))  # moving(y) = fixed(y - shift): u = shift
    cost = cost_volume(fixed, moving, radius=2, metric=metric, feature_scale=5.0, box_filters=1)
    off = displacement_offsets(2, 3)
    best = off[interior(cost).argmin(1)]  # (1, *S', 3)
    assert (best == torch.tensor(shift, dtype=best.dtype)).all(-1).float().mean() > 0.95


def test_cost_volume_slabs_identical_and_2d():
    fixed, moving = smooth_features((9, 7, 8), seed=1), smooth_features((9, 7, 8), seed=2)
    full = cost_volume(fixed, moving, radius=1, metric="ssd", box_filters=2)
    slabs = cost_volume(fixed, moving, radius=1, metric="ssd", box_filters=2, slab_size=4)
    torch.testing.assert_close(full, slabs)
    f2, m2 = smooth_features((12, 10)), smooth_features((12, 10), seed=3)
    assert cost_volume(f2, m2, radius=2).shape == (1, 25, 12, 10)


@pytest.mark.parametrize("soft", [True, False])
def test_convex_recovers_translation(soft):
    fixed = smooth_features((12, 10, 12), channels=8)
    shift = (2, -1, 1)
    moving = torch.roll(fixed, shifts=shift, dims=(2, 3, 4))
    cost = cost_volume(fixed, moving, radius=2, metric="sad", feature_scale=5.0)
    off = displacement_offsets(2, 3)
    disp = soft_coupled_convex(cost, off) if soft else hard_coupled_convex(cost, off, slab_size=5)
    target = torch.tensor(shift, dtype=disp.dtype).view(1, 3, 1, 1, 1)
    assert (interior(disp, 4) - target).abs().max() < 0.1  # roll wraps around near the border


def quadratic_cost(minimum, weight):
    """Cost volume ``weight * ||d - minimum(x)||^2`` over the radius-2 offsets: ``(1, 125, *S)``."""
    offsets = displacement_offsets(2, 3)
    return weight * (offsets.view(1, 125, 3, 1, 1, 1) - minimum.unsqueeze(1)).pow(2).sum(2), offsets


def test_soft_convex_at_temperature_20_is_the_hard_arg_min():
    """A cost with a sharp known integer minimum per voxel: hard arg-min + one box filter is
    ``box_filter(minimum)``; the soft version approaches it as the temperature grows (measured max
    error 0.30 at 1, 6e-3 at 5, 1e-7 at the paper's 20), with CST's coupling schedule."""
    generator = torch.Generator().manual_seed(0)
    minimum = box_filter(torch.randn(1, 3, 10, 9, 8, generator=generator), 3)
    minimum = (2.5 * minimum / minimum.abs().max()).round().clamp(-2, 2)  # integers in [-2, 2], not constant
    cost, offsets = quadratic_cost(minimum, torch.ones(1, 1, 10, 9, 8))
    schedule = (0.003, 0.03, 0.3)
    torch.testing.assert_close(hard_coupled_convex(cost, offsets, schedule=schedule), box_filter(minimum))
    errors = [(soft_coupled_convex(cost, offsets, schedule=schedule, temperature=t) - box_filter(minimum)).abs().max()
              for t in (1.0, 5.0, 20.0)]
    assert errors[0] > 0.1 and errors[0] > errors[1] > errors[2] and errors[2] < 1e-5


def test_coupling_schedule_pulls_a_weak_outlier_to_its_neighbours():
    """One voxel weakly prefers +2 (cost weight 0.05), all others strongly 0. Without coupling rounds
    the outlier survives (box-filtered: 2/27 at its voxel); CST's schedule (0.003, 0.03, 0.3) pulls it
    to 0 (hard: exactly zero). Soft at temperature 20 follows: measured 0.063 without, 0.003 with."""
    minimum, weight = torch.zeros(1, 3, 7, 7, 7), torch.ones(1, 1, 7, 7, 7)
    minimum[0, 0, 3, 3, 3], weight[0, 0, 3, 3, 3] = 2.0, 0.05
    cost, offsets = quadratic_cost(minimum, weight)
    uncoupled = hard_coupled_convex(cost, offsets, schedule=())
    assert uncoupled[0, 0, 3, 3, 3].item() == pytest.approx(2 / 27)
    assert hard_coupled_convex(cost, offsets, schedule=(0.003, 0.03, 0.3)).abs().max() == 0
    soft_uncoupled = soft_coupled_convex(cost, offsets, schedule=(), temperature=20.0)[0, 0, 3, 3, 3]
    soft_coupled = soft_coupled_convex(cost, offsets, schedule=(0.003, 0.03, 0.3), temperature=20.0)[0, 0, 3, 3, 3]
    assert soft_uncoupled > 0.05 and soft_coupled < 0.005


def test_soft_convex_is_differentiable():
    fixed = smooth_features((6, 6, 6)).requires_grad_(True)
    moving = smooth_features((6, 6, 6), seed=4).requires_grad_(True)
    cost = cost_volume(fixed, moving, radius=1, metric="sad", feature_scale=5.0)
    disp = soft_coupled_convex(cost, displacement_offsets(1, 3), temperature=1.0)
    disp.pow(2).sum().backward()
    for t in (fixed, moving):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def _smooth_field(shape, amplitude, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return amplitude * box_filter(torch.randn(1, len(shape), *shape, generator=gen), 4)


def test_ice_keeps_exact_inverse_and_repairs_noisy_one():
    shape = (14, 12, 13)
    t = torch.tensor([1.5, -0.5, 0.75]).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    torch.testing.assert_close(interior(inverse_consistent(t, -t)), interior(t))
    u = _smooth_field(shape, 6.0)
    u_inv = -u
    for _ in range(30):  # fixed point of v = -u∘(id + v): the inverse of u
        u_inv = -warp(u, u_inv)
    noisy = u + _smooth_field(shape, 3.0, seed=7)
    fixed_u, fixed_inv = inverse_consistent(noisy, u_inv, iterations=15, return_both=True)
    residual_before = interior(noisy + warp(u_inv, noisy)).abs().mean()
    residual_after = interior(fixed_u + warp(fixed_inv, fixed_u)).abs().mean()
    assert residual_after < 0.2 * residual_before
    assert interior(fixed_u - u).abs().mean() < interior(noisy - u).abs().mean()


def test_adam_io_recovers_small_shift_and_reduces_loss():
    fixed = smooth_features((10, 10, 10), channels=4, seed=5, smoothing=3) * 20
    shift = torch.tensor([0.8, -0.6, 0.5]).view(1, 3, 1, 1, 1)
    moving = warp(fixed, -shift.expand(1, 3, 10, 10, 10))  # moving(x) = fixed(x - shift): u = shift
    init = torch.zeros(1, 3, 20, 20, 20)  # full-resolution field, features on the grid_spacing-2 grid
    with torch.no_grad():
        grid_out = adam_instance_optimisation(init, fixed, moving, iterations=40, lr=0.2, return_grid=True)
        full_out = adam_instance_optimisation(init + 2 * shift, fixed, moving, iterations=0)
    assert grid_out.shape == (1, 3, 10, 10, 10) and not grid_out.requires_grad
    before = (fixed - moving).pow(2).mean()
    after = (fixed - warp(moving, grid_out)).pow(2).mean()
    assert after < 0.3 * before
    assert (interior(grid_out) - shift).abs().mean() < 0.15
    assert full_out.shape == init.shape  # full-res result, vectors in full-res voxels
    torch.testing.assert_close(interior(full_out, 6).mean((2, 3, 4)), 2 * shift.view(1, 3), atol=1e-4, rtol=0)


def affine_field(coords, matrix, offset):
    """``matrix @ x + offset`` at the grid points ``x`` spanned by the 1D ``coords``, shape ``(1, 3, *S)``."""
    x = torch.stack(torch.meshgrid(*coords, indexing="ij"))
    return (torch.einsum("de,e...->d...", matrix, x) + offset.view(3, 1, 1, 1))[None]


@pytest.mark.parametrize("size", [(48, 56, 64), (48, 56, 60)])
def test_upsample_field_reproduces_an_affine_field_in_the_interior(size):
    """Linear x2 and the in-grid box filter keep an affine field affine away from the border, so the
    chain equals the affine field at the new voxel centres (``(i + 0.5) / r - 0.5`` of the coarse grid,
    align_corners=False), vectors times ``r`` per axis. Measured: exact (1e-14) beyond 20 fine voxels,
    0.45 voxels off at 8 (borders replicate)."""
    coarse = (6, 7, 8)
    matrix = torch.tensor([[0.3, -0.2, 0.1], [0.05, 0.25, -0.15], [-0.1, 0.2, 0.3]], dtype=torch.float64)
    offset = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    disp = affine_field([torch.arange(n, dtype=torch.float64) for n in coarse], matrix, offset)
    up = upsample_field(disp, size)
    ratio = torch.tensor([s / c for s, c in zip(size, coarse)], dtype=torch.float64)
    centres = [(torch.arange(s, dtype=torch.float64) + 0.5) / r - 0.5 for s, r in zip(size, ratio)]
    expected = affine_field(centres, matrix, offset) * ratio.view(1, 3, 1, 1, 1)
    assert up.shape == (1, 3, *size)
    torch.testing.assert_close(interior(up, 20), interior(expected, 20), atol=1e-9, rtol=0)
    assert identity_grid((2, 3)).shape == (1, 2, 2, 3)


@pytest.mark.parametrize("shape, times, kernel_size", [((2, 5, 1, 2, 7), 2, 5), ((1, 3, 9, 8, 7), 3, 3),
                                                       ((2, 4, 6, 5), 2, 3), ((1, 2, 11), 3, 5)])
def test_box_filter_is_the_in_grid_mean(shape, times, kernel_size):
    """The separable filter equals a non-separable average over the in-grid neighbours (avg-pool of
    the zero-padded map divided by the avg-pool of the zero-padded ones), in 1D, 2D and 3D."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
            3: torch.nn.functional.avg_pool3d}[x.dim() - 2]
    pad = (kernel_size // 2,) * (2 * (x.dim() - 2))
    count = pool(torch.nn.functional.pad(torch.ones_like(x[:1, :1]), pad), kernel_size, stride=1)
    expected = x
    for _ in range(times):
        expected = pool(torch.nn.functional.pad(expected, pad), kernel_size, stride=1) / count
    torch.testing.assert_close(box_filter(x, times, kernel_size), expected)


@pytest.mark.parametrize("shape, kernel_size", [((2, 3, 6, 5, 7), 3), ((1, 2, 9, 6), 5), ((1, 1, 8), 3),
                                                ((1, 2, 4, 4, 4), 1)])
def test_valid_box_mean_is_avg_pool_without_padding(shape, kernel_size):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
            3: torch.nn.functional.avg_pool3d}[x.dim() - 2]
    before = x.clone()
    torch.testing.assert_close(valid_box_mean(x, kernel_size), pool(x, kernel_size, stride=1))
    assert torch.equal(x, before)  # the input is left alone


@pytest.mark.parametrize("shape, kernel_size", [((2, 2, 5, 1, 4), 3), ((1, 2, 7, 3), 5)])
def test_box_filter_gradient_matches_finite_differences(shape, kernel_size):
    """The hand-written backward (window sum of grad / count) against numerical derivatives,
    including grids thinner than the kernel."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_filter(t, 2, kernel_size), (x,))
