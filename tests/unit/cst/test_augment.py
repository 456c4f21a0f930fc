"""The asymmetric affine augmentation keeps the displacement target consistent with both images."""

import torch

from regframe.augment import PairAffineAugmentation, transform_target
from regframe.optim.smoothing import box_filter
from regframe.spatial import resize_field, warp


def test_transformed_target_aligns_augmented_images():
    gen = torch.Generator().manual_seed(0)
    shape = (20, 18, 22)
    moving = box_filter(torch.rand(2, 1, *shape, generator=gen), 3)
    field = 2.0 * box_filter(torch.randn(2, 3, *shape, generator=gen), 6)
    fixed = warp(moving, field)  # fixed(x) = moving(x + u(x)) by construction
    augment = PairAffineAugmentation(0.075, 0.05, seed=1)
    fixed_aug, moving_aug, target_aug = augment(fixed, moving, field)
    inner = (slice(None), slice(None)) + (slice(5, -5),) * 3
    aligned = (warp(moving_aug, target_aug) - fixed_aug)[inner].abs().mean()
    unaligned = (moving_aug - fixed_aug)[inner].abs().mean()
    assert aligned < 0.15 * unaligned
    assert not torch.allclose(fixed_aug, fixed)  # the augmentation did something


def test_target_on_half_grid_matches_full_grid():
    gen = torch.Generator().manual_seed(2)
    field = 3.0 * box_filter(torch.randn(1, 3, 24, 20, 16, generator=gen), 6)
    augment = PairAffineAugmentation(seed=3)
    thetas = augment.sample(1, 3, "cpu", torch.float32)
    full = transform_target(field, *thetas)
    half = transform_target(resize_field(field, (12, 10, 8)), *thetas)
    inner = (slice(None), slice(None)) + (slice(3, -3),) * 3
    assert (resize_field(full, (12, 10, 8)) - half)[inner].abs().mean() < 0.1


def test_identity_affines_leave_everything_unchanged():
    field = torch.randn(1, 2, 8, 9)
    theta = torch.eye(2, 3).unsqueeze(0)
    torch.testing.assert_close(transform_target(field, theta, theta)[:, :, 1:-1, 1:-1], field[:, :, 1:-1, 1:-1],
                               atol=1e-4, rtol=0)
