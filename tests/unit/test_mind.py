"""MIND-SSC: channel counts, value range, invariance to intensity scaling, known answers."""

from __future__ import annotations

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.features.mind import MINDSSC, _neighbour_pairs, _patch_distances, _patch_distances_reference, mind_ssc


def test_neighbour_pairs_are_the_twelve_ssc_pairs_in_3d_and_four_in_2d():
    pairs3 = _neighbour_pairs(3)
    assert len(pairs3) == 12
    assert all(sum((a - b) ** 2 for a, b in zip(p, q)) == 2 for p, q in pairs3)
    assert len(_neighbour_pairs(2)) == 4


def test_shapes_and_range(blob_volume):
    out = mind_ssc(blob_volume, radius=1, dilation=2)
    assert out.shape == (1, 12, *blob_volume.shape[2:])
    assert out.min() > 0 and out.max() <= 1 + 1e-6
    assert MINDSSC(2, 2)(blob_volume[:, :, 10]).shape == (1, 4, 24, 22)


def test_each_voxel_has_a_channel_equal_to_one(blob_volume):
    """The per-voxel minimum is subtracted, so the best-matching pair has exp(0) = 1."""
    out = mind_ssc(blob_volume)
    assert torch.allclose(out.max(dim=1).values, torch.ones(1), atol=1e-6)


def test_invariant_to_affine_intensity_change(blob_volume):
    assert torch.allclose(mind_ssc(blob_volume), mind_ssc(3.0 * blob_volume - 7.0), atol=1e-5)


def test_constant_image_gives_ones_without_nan():
    out = mind_ssc(torch.full((1, 1, 6, 7, 8), 3.0))
    assert not out.isnan().any() and torch.allclose(out, torch.ones_like(out))


def test_matches_explicit_formula_at_one_voxel():
    """Radius 0 (no box filter): channel of pair (a, b) is exp(-(I(x+d·a) - I(x+d·b))^2 / var) before normalisation."""
    torch.manual_seed(0)
    image = torch.rand(1, 1, 9, 9, 9)
    out = mind_ssc(image, radius=0, dilation=1)
    x = (4, 4, 4)
    ssd = torch.stack([(image[(0, 0) + tuple(c + o for c, o in zip(x, a))]
                        - image[(0, 0) + tuple(c + o for c, o in zip(x, b))]) ** 2 for a, b in _neighbour_pairs(3)])
    ssd = ssd - ssd.min()
    ratio = -torch.log(out[(0, slice(None)) + x])
    # exp(-ssd / var): the ratio ssd / (-log out) is the same variance for every channel with ssd > 0
    var = ssd[ssd > 0] / ratio[ssd > 0]
    assert torch.allclose(var, var.mean().expand_as(var), rtol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 20, 18, 22), (2, 1, 13, 17, 15), (1, 1, 25, 30), (1, 1, 7, 8, 9)])
@pytest.mark.parametrize("radius, dilation", [(1, 2), (2, 2), (0, 3), (2, 3)])
def test_shifted_copy_patch_distances_equal_the_definition(shape, radius, dilation):
    """The fast path (6 distinct difference images, border layers from slabs) gives the box-filtered
    squared differences of every stencil pair exactly as the per-pair definition, borders included;
    the last shape is too small for the slabs and falls back to the definition."""
    torch.manual_seed(sum(shape) + radius + dilation)
    image = 100 * torch.rand(*shape)
    reference = _patch_distances_reference(image, radius, dilation)
    torch.testing.assert_close(_patch_distances(image, radius, dilation), reference, rtol=1e-5,
                               atol=1e-5 * reference.abs().max().item())


def test_bad_input_is_reported():
    with pytest.raises(RegframeInputError, match="expects a"):
        mind_ssc(torch.zeros(1, 2, 5, 5, 5))
