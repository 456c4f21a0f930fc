"""Spatial operations: known answers for warps, composition, resizing, Jacobians and affines."""

import math

import pytest
import torch

from regframe.spatial import (
    affine_to_field,
    compose,
    identity_grid,
    jacobian_determinant,
    normalized_to_voxel_affine,
    resize_field,
    sample_points,
    warp,
    warp_labels,
)


@pytest.mark.parametrize("shape", [(9, 11), (7, 8, 9)])
def test_identity_grid_holds_voxel_indices(shape):
    grid = identity_grid(shape)
    assert grid.shape == (1, len(shape), *shape)
    index = tuple(n - 2 for n in shape)
    assert grid[(0, slice(None), *index)].tolist() == list(index)


@pytest.mark.parametrize("dims", [2, 3])
def test_warp_integer_shift_is_backward_map(dims):
    shape = (10, 12, 11)[:dims]
    image = torch.rand(1, 1, *shape)
    for axis in range(dims):
        disp = torch.zeros(1, dims, *shape)
        disp[:, axis] = 2.0  # warped(x) = moving(x + 2 e_axis)
        warped = warp(image, disp)
        inner = [slice(None)] * 2 + [slice(None)] * dims
        inner[2 + axis] = slice(0, shape[axis] - 2)
        source = [slice(None)] * 2 + [slice(None)] * dims
        source[2 + axis] = slice(2, None)
        torch.testing.assert_close(warped[tuple(inner)], image[tuple(source)])


def test_warp_labels_nearest_and_onehot_keep_label_set():
    labels = torch.zeros(1, 1, 12, 12, 12, dtype=torch.long)
    labels[..., 2:6, 2:8, 3:9] = 1
    labels[..., 7:11, 3:9, 2:6] = 2
    disp = 0.4 * torch.randn(1, 3, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    for method in ("nearest", "onehot"):
        out = warp_labels(labels, disp, method=method)
        assert out.dtype == labels.dtype and set(out.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(warp_labels(labels, torch.zeros_like(disp), method="onehot"), labels)


def test_compose_of_translations_adds_them():
    shape = (8, 9, 10)
    a = torch.zeros(1, 3, *shape)
    a[:, 0] = 1.5
    b = torch.zeros(1, 3, *shape)
    b[:, 2] = -0.5
    torch.testing.assert_close(compose(a, b), a + b)


def test_compose_order_matches_two_successive_warps(blob_volume):
    grid = identity_grid(blob_volume.shape[2:])
    first = 2.0 * torch.sin(grid.flip(1) / 4.0)  # smooth, non-commuting fields of ~2 voxels
    second = 2.0 * torch.cos(grid.roll(1, dims=1) / 5.0)
    twice = warp(warp(blob_volume, first), second)
    once = warp(blob_volume, compose(first, second))
    wrong = warp(blob_volume, compose(second, first))
    err = (twice - once)[..., 3:-3, 3:-3, 3:-3].abs().mean()
    err_wrong = (twice - wrong)[..., 3:-3, 3:-3, 3:-3].abs().mean()
    assert err < 0.25 * err_wrong


def test_resize_field_rescales_vectors():
    disp = torch.ones(1, 3, 4, 5, 6) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)
    up = resize_field(disp, (8, 15, 6))
    assert up.shape == (1, 3, 8, 15, 6)
    torch.testing.assert_close(up.mean(dim=(2, 3, 4)), torch.tensor([[2.0, 6.0, 3.0]]))


@pytest.mark.parametrize("dims", [2, 3])
def test_jacobian_of_linear_field(dims):
    shape = (9, 10, 11)[:dims]
    a = torch.tensor([[0.2, 0.1, 0.0], [-0.1, 0.3, 0.05], [0.0, 0.1, -0.2]])[:dims, :dims]
    grid = identity_grid(shape)
    disp = torch.einsum("ij,bj...->bi...", a, grid)
    det = jacobian_determinant(disp)
    assert det.shape == (1, *[n - 2 for n in shape])
    torch.testing.assert_close(det, torch.full_like(det, float(torch.linalg.det(torch.eye(dims) + a))))


def test_affine_to_field_rotation_and_normalized_conversion():
    shape = (10, 12, 14)
    angle = math.radians(10)
    theta = torch.tensor([[[math.cos(angle), -math.sin(angle), 0, 0.1],
                           [math.sin(angle), math.cos(angle), 0, 0.0],
                           [0, 0, 1, -0.05]]])
    voxel = normalized_to_voxel_affine(theta, shape)
    disp = affine_to_field(voxel, shape)
    # compare with explicit normalised-coordinate mapping of two voxels
    for x in [(0, 0, 0), (9, 5, 13)]:
        p = torch.tensor([(2 * xi + 1) / n - 1 for xi, n in zip(x, shape)])
        q = theta[0, :, :3] @ p + theta[0, :, 3]
        target = torch.tensor([((qi + 1) * n - 1) / 2 for qi, n in zip(q, shape)])
        torch.testing.assert_close(torch.tensor(x, dtype=torch.float32) + disp[(0, slice(None), *x)], target)


def test_warp_rejects_mismatched_field():
    with pytest.raises(ValueError, match="channels"):
        warp(torch.rand(1, 1, 5, 5, 5), torch.zeros(1, 2, 5, 5, 5))
    with pytest.raises(ValueError, match="grid"):
        warp(torch.rand(1, 1, 5, 5, 5), torch.zeros(1, 3, 5, 5, 6))


@pytest.mark.parametrize("dims", [2, 3])
def test_jacobian_closed_form_matches_linalg_det(dims):
    from regframe.spatial import spatial_gradient

    disp = torch.randn(2, dims, *(7, 8, 9)[:dims], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    jac = spatial_gradient(disp).movedim(1, -1).movedim(1, -1) + torch.eye(dims, dtype=torch.float64)
    torch.testing.assert_close(jacobian_determinant(disp), torch.linalg.det(jac))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("shape", [(9, 11), (7, 8, 9), (1, 6, 5)])
def test_warp_matches_monai_warp(shape, mode):
    import warnings

    from monai.networks.blocks import Warp

    generator = torch.Generator().manual_seed(len(shape))
    image = torch.randn(2, 3, *shape, generator=generator)
    disp = 3.0 * torch.randn(2, len(shape), *shape, generator=generator)  # reaches past the border
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = Warp(mode=mode, padding_mode="border")(image, disp)
    torch.testing.assert_close(warp(image, disp, mode=mode), expected, rtol=0.0, atol=1e-5)


def test_warp_grid_cache_is_keyed_by_dtype_and_device():
    from regframe.spatial import _cached_identity_grid

    _cached_identity_grid.cache_clear()
    image = torch.rand(1, 1, 6, 7, 8, generator=torch.Generator().manual_seed(0))
    disp = torch.zeros(1, 3, 6, 7, 8)
    disp[:, 1] = 1.0  # warped(x) = image(x + e_y)
    expected = torch.cat([image[..., 1:, :], image[..., -1:, :]], dim=-2)  # border repeats
    torch.testing.assert_close(warp(image, disp), expected)
    out64 = warp(image.double(), disp.double())  # same shape, second dtype: its own grid
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, expected.double())
    meta = warp(image.to("meta"), disp.to("meta"))  # same shape, second device
    assert meta.device.type == "meta" and meta.shape == image.shape
    torch.testing.assert_close(warp(image, disp), expected)  # the first grid is still intact
    info = _cached_identity_grid.cache_info()
    assert (info.misses, info.hits) == (3, 1)  # one grid per (shape, device, dtype), then reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_warp_same_shape_on_gpu_then_cpu():
    image, disp = torch.rand(1, 1, 6, 7, 8), torch.randn(1, 3, 6, 7, 8)
    on_gpu = warp(image.cuda(), disp.cuda()).cpu()
    torch.testing.assert_close(warp(image, disp), on_gpu)


@pytest.mark.parametrize("dims", [2, 3])
def test_sample_points_at_every_voxel_equals_warp(dims):
    """Sampling at x + u(x) for every voxel x gives the warped image, border values outside included;
    a point on a voxel centre returns that voxel."""
    torch.manual_seed(dims)
    shape = (7, 6, 5)[:dims]
    image = torch.rand(2, 3, *shape)
    disp = 2.5 * torch.randn(2, dims, *shape)
    points = (identity_grid(shape) + disp).flatten(2).transpose(1, 2)
    sampled = sample_points(image, points)
    torch.testing.assert_close(sampled, warp(image, disp).flatten(2))
    centre = torch.tensor([[[1.0, 2.0, 3.0][:dims]]]).expand(2, 1, dims)
    voxel = (slice(None), slice(None), 1, 2, 3)[:dims + 2]
    torch.testing.assert_close(sample_points(image, centre)[:, :, 0], image[voxel])
    with pytest.raises(ValueError, match="points must be"):
        sample_points(image, points[..., :1])
