"""Known-answer tests of the optimisation blocks (correlation, convex, ICE, Adam IO, upsampling)."""

import pytest
import torch

from regframe.optim import (adam_instance_optimisation, box_filter, cost_volume, displacement_offsets,
                            hard_coupled_convex, inverse_consistent, soft_coupled_convex, upsample_field)
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


def test_upsample_field_constant_and_scaling():
    disp = torch.ones(1, 3, 3, 4, 5)
    up = upsample_field(disp, (24, 32, 40))
    assert up.shape == (1, 3, 24, 32, 40)
    torch.testing.assert_close(up, torch.full_like(up, 8.0))
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
