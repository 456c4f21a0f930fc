"""Correlation pyramid and ConvexAdam-style estimators (with Adam IO through ``Refined``) on tiny
volumes with known answers."""

from __future__ import annotations

import re

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.base import IdentityEstimator
from regframe.estimators.convex_adam import convex_adam
from regframe.estimators.pyramid import CorrelationPyramidEstimator, mind_pyramid
from regframe.estimators.refine import Refined
from regframe.estimators.registry import build_training_free, mind_refined, parse_method
from regframe.estimators.two_step import TwoStep
from regframe.features.mind import MINDSSC
from regframe.optim.adam import adam_instance_optimisation
from regframe.optim.instance import InstanceOptimisation
from regframe.optim.smoothing import box_filter, pool
from regframe.spatial import warp


def _interior(disp: torch.Tensor, margin: int = 5) -> torch.Tensor:
    index = (slice(None), slice(None)) + (slice(margin, -margin),) * (disp.dim() - 2)
    return disp[index]


@pytest.mark.parametrize("shift", [(3, 0, -2), (-3, 2, 1)])
def test_pyramid_recovers_a_translation_beyond_the_finest_radius(blob_volume, shift):
    """moving(x) = fixed(x - s) is aligned by u = +s (warped(x) = moving(x + u)); |s| exceeds the finest radius, so the coarse level matters."""
    moving = torch.roll(blob_volume, shifts=shift, dims=(2, 3, 4))
    estimator = CorrelationPyramidEstimator(features=MINDSSC(1, 1), grid_spacing=1, levels=(2, 1), radii=(2, 2),
                                            smooth_iters=1)
    disp = estimator(blob_volume, moving)
    assert disp.shape == (1, 3, 20, 24, 22)
    mean = _interior(disp).mean(dim=(2, 3, 4))[0]
    assert torch.allclose(mean, torch.tensor(shift, dtype=torch.float32), atol=0.75)


def test_pyramid_in_2d_with_ice_and_adam(blob_volume):
    fixed = blob_volume[:, :, 10]
    moving = torch.roll(fixed, shifts=(2, -2), dims=(2, 3))
    pyramid = CorrelationPyramidEstimator(features=MINDSSC(1, 1), grid_spacing=1, levels=(2, 1), radii=(2, 2),
                                          ice=True)
    disp = Refined(pyramid, InstanceOptimisation(iterations=5, smooth_weight=1.25))(fixed, moving)
    assert disp.shape == (1, 2, 24, 22)
    before = (fixed - moving).abs().mean()
    after = (fixed - warp(moving, disp)).abs().mean()
    assert after < 0.5 * before


@pytest.mark.parametrize("shift", [(3, 0, -2), (-3, 2, 1)])
def test_coarse_composition_recovers_a_translation(blob_volume, shift):
    """Composing on the finest level's grid (features pooled once, upsampled once) recovers the same
    known translation as composing on the image grid."""
    moving = torch.roll(blob_volume, shifts=shift, dims=(2, 3, 4))
    settings = dict(features=MINDSSC(1, 1), grid_spacing=2, levels=(2, 1), radii=(2, 2), smooth_iters=1,
                    recompute_features=False)
    coarse = CorrelationPyramidEstimator(coarse_composition=True, **settings)
    field, fixed_feat, moving_feat = coarse.field_and_features(blob_volume, moving)
    assert field.shape == (1, 3, 10, 12, 11)
    torch.testing.assert_close(fixed_feat, coarse.extract(blob_volume), atol=0, rtol=0)
    disp = coarse(blob_volume, moving)
    assert disp.shape == (1, 3, 20, 24, 22)
    mean = _interior(disp).mean(dim=(2, 3, 4))[0]
    assert torch.allclose(mean, torch.tensor(shift, dtype=torch.float32), atol=0.75)
    with pytest.raises(RegframeInputError, match="coarse_composition"):
        CorrelationPyramidEstimator(coarse_composition=True)


def test_active_levels_count_cells_along_the_shortest_axis():
    """Level grid = ceil(size / (grid_spacing · factor)) per axis; a level runs when its shortest axis
    has >= min_level_cells cells; the finest level always runs."""
    pyramid = CorrelationPyramidEstimator(grid_spacing=2, levels=(4, 2, 1), radii=(3, 2, 1), min_level_cells=8)
    # 69×69×64 (prostate MR): coarsest ceil(64 / 8) = 8 cells -> runs; with 9 it does not
    assert pyramid.active_levels((69, 69, 64)) == [(4, 3), (2, 2), (1, 1)]
    assert pyramid.active_levels((69, 69, 57)) == [(4, 3), (2, 2), (1, 1)]  # ceil(57 / 8) = 8
    assert pyramid.active_levels((69, 69, 56)) == [(2, 2), (1, 1)]  # 7 cells
    pyramid.min_level_cells = 9
    assert pyramid.active_levels((69, 69, 64)) == [(2, 2), (1, 1)]
    assert pyramid.active_levels((72, 80, 80)) == [(4, 3), (2, 2), (1, 1)]  # 9 cells
    pyramid.min_level_cells = 100
    assert pyramid.active_levels((40, 48, 40)) == [(1, 1)]  # never below the finest level
    assert CorrelationPyramidEstimator(levels=(4, 2, 1), radii=(3, 2, 1)).active_levels((2, 2, 2)) == [
        (4, 3), (2, 2), (1, 1)]  # the default 1 runs every level
    with pytest.raises(RegframeInputError, match="min_level_cells"):
        CorrelationPyramidEstimator(min_level_cells=0)


@pytest.mark.parametrize("coarse_composition", [False, True])
def test_a_skipped_level_gives_the_pyramid_without_it(blob_volume, coarse_composition):
    """On the 20×24×22 blob with grid spacing 1, level factor 4 has ceil(20 / 4) = 5 cells along the
    shortest axis: min_level_cells = 6 drops it, and the field equals that of the pyramid built
    without that level, exactly; with 5 it runs and changes the field."""
    moving = torch.roll(blob_volume, shifts=(3, 0, -2), dims=(2, 3, 4))
    settings = dict(features=MINDSSC(1, 1), grid_spacing=1, smooth_iters=1, recompute_features=False,
                    coarse_composition=coarse_composition)
    skipping = CorrelationPyramidEstimator(levels=(4, 2, 1), radii=(2, 2, 1), min_level_cells=6, **settings)
    without = CorrelationPyramidEstimator(levels=(2, 1), radii=(2, 1), **settings)
    every = CorrelationPyramidEstimator(levels=(4, 2, 1), radii=(2, 2, 1), min_level_cells=5, **settings)
    assert skipping.active_levels(blob_volume.shape[2:]) == [(2, 2), (1, 1)]
    torch.testing.assert_close(skipping(blob_volume, moving), without(blob_volume, moving), atol=0, rtol=0)
    assert not torch.equal(every(blob_volume, moving), without(blob_volume, moving))


class CountingMIND(MINDSSC):
    calls = 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        CountingMIND.calls += 1
        return super().forward(image)


def test_refined_pyramid_extracts_features_once_per_image(blob_volume):
    """A feature-sharing estimator gives Refined its features: two extractions per pair, not four."""
    moving = torch.roll(blob_volume, shifts=(2, -1, 1), dims=(2, 3, 4))
    pyramid = CorrelationPyramidEstimator(features=CountingMIND(1, 1), grid_spacing=2, levels=(1,), radii=(2,))
    CountingMIND.calls = 0
    Refined(pyramid, InstanceOptimisation(grid_spacing=2, iterations=2))(blob_volume, moving)
    assert CountingMIND.calls == 2


def test_neg_dot_metric_with_an_injected_feature_module(blob_volume):
    """Any module (B,1,*S)->(B,C,*S') works; a stride-2 extractor gives a field at the image size."""
    features = torch.nn.Sequential(MINDSSC(1, 1), torch.nn.AvgPool3d(2))
    moving = torch.roll(blob_volume, shifts=(2, 2, 0), dims=(2, 3, 4))
    estimator = CorrelationPyramidEstimator(features=features, grid_spacing=1, levels=(1,), radii=(2,),
                                            metric="neg_dot")
    disp = estimator(blob_volume, moving)
    assert disp.shape == (1, 3, 20, 24, 22)
    assert _interior(disp)[:, :2].mean() > 1.0


def test_refined_pyramid_is_the_pyramid_then_adam_on_its_pooled_features(blob_volume):
    """Refined(pyramid, io) = the IO kernel started from the pyramid's field on the pyramid's own
    features pooled by io.grid_spacing (what the pyramid's built-in IO used to do)."""
    moving = torch.roll(blob_volume, shifts=(2, -1, 1), dims=(2, 3, 4))
    pyramid = CorrelationPyramidEstimator(features=MINDSSC(1, 1), grid_spacing=2, levels=(1,), radii=(2,))
    refined = Refined(pyramid, InstanceOptimisation(grid_spacing=2, iterations=4, smooth_weight=1.25))
    with torch.no_grad():
        start = pyramid(blob_volume, moving)
        expected = adam_instance_optimisation(start, pool(pyramid.extract(blob_volume), 2),
                                              pool(pyramid.extract(moving), 2), iterations=4, lr=1.0,
                                              data_weight=12.0, smooth_weight=1.25)
    torch.testing.assert_close(refined(blob_volume, moving), expected, atol=0, rtol=0)
    assert (expected - start).abs().max() > 0


def test_convex_adam_estimator_improves_alignment(blob_volume):
    moving = torch.roll(blob_volume, shifts=(2, -1, 1), dims=(2, 3, 4))
    estimator = convex_adam(mind_dilation=1, grid_spacing=2, search_radius=2, io_iterations=10)
    disp = estimator(blob_volume, moving)
    before = (blob_volume - moving).pow(2).mean()
    after = (blob_volume - warp(moving, disp)).pow(2).mean()
    assert after < 0.3 * before


def test_mind_refined_aligns_from_a_network_field_and_keeps_it_at_zero_iterations(blob_volume):
    """``regframe register --checkpoint CKPT --adam N``: the network's field refined by pyramid_mind's Adam
    stage on MIND-SSC. From a network that learned nothing (identity), Adam alone recovers a small
    translation; N = 0 returns the network's field unchanged; N < 0 is an input error naming the option."""
    moving = torch.roll(blob_volume, shifts=(2, -1, 1), dims=(2, 3, 4))
    assert torch.equal(mind_refined(IdentityEstimator(), 0)(blob_volume, moving), torch.zeros(1, 3, 20, 24, 22))
    disp = mind_refined(IdentityEstimator(), 60)(blob_volume, moving)
    centre = disp[0, :, 6:14, 8:16, 7:15].mean(dim=(1, 2, 3))
    assert torch.allclose(centre, torch.tensor([2.0, -1.0, 1.0]), atol=0.25)
    before = (blob_volume - moving).pow(2).mean()
    assert (blob_volume - warp(moving, disp)).pow(2).mean() < 0.05 * before
    with pytest.raises(RegframeInputError, match="--adam: adam_iterations must be >= 0"):
        mind_refined(IdentityEstimator(), -1)


def test_registry_has_the_training_free_methods():
    convex = build_training_free("convex_adam")
    assert isinstance(convex, Refined) and convex.io.iterations == 80 and convex.estimator.levels == (1,)
    with_io = build_training_free("pyramid_mind")
    assert isinstance(with_io, Refined) and with_io.io.iterations == 20 and with_io.io.grid_spacing == 2
    assert with_io.io.foreground_threshold == 0.05 and with_io.io.final_smoothing == 1
    assert mind_pyramid().coarse_composition
    assert isinstance(build_training_free("pyramid_mind_fast"), CorrelationPyramidEstimator)
    assert mind_pyramid().levels == (4, 2, 1)
    two_pass = build_training_free("pyramid_mind_two_pass:min_level_cells=3")
    assert isinstance(two_pass, TwoStep) and isinstance(two_pass.first, CorrelationPyramidEstimator)
    assert isinstance(two_pass.second, Refined) and two_pass.second.estimator.min_level_cells == 3
    split = build_training_free("pyramid_mind_two_pass:first_levels=2,second_levels=1")
    assert split.first.levels == (4, 2) and split.first.radii == (3, 2)
    assert split.second.estimator.levels == (1,) and split.second.estimator.radii == (1,)
    assert build_training_free("pyramid_mind:adam_iterations=7").io.iterations == 7
    assert build_training_free("pyramid_mind:ice=1").estimator.ice and not mind_pyramid().ice
    assert build_training_free("pyramid_mind_two_pass:adam_iterations=12").second.io.iterations == 12


def test_method_specs_pass_integer_options_and_name_what_is_wrong():
    estimator = build_training_free("pyramid_mind:min_level_cells=17,smooth_iters=1")
    assert estimator.estimator.min_level_cells == 17 and estimator.estimator.smooth_iters == 1
    assert build_training_free("pyramid_mind_fast:min_level_cells=9").min_level_cells == 9
    assert build_training_free("pyramid_mind").estimator.min_level_cells == 1
    assert parse_method("convex_adam") == ("convex_adam", {})
    for spec, message in (("pyramid:x=1", "unknown method 'pyramid'"),
                          ("pyramid_mind:levels=3", "no option 'levels'; its options: min_level_cells"),
                          ("convex_adam:min_level_cells=3", "its options: none"),
                          ("pyramid_mind:min_level_cells=2.5", "needs an integer, got '2.5'"),
                          ("pyramid_mind:min_level_cells", "needs an integer, got 'nothing'"),
                          ("pyramid_mind:min_level_cells=0", "min_level_cells must be >= 1"),
                          ("pyramid_mind_two_pass:second_levels=4", "second_levels must be 1 to 3, got 4")):
        with pytest.raises(RegframeInputError, match=re.escape(message)):
            build_training_free(spec)


def test_pool_and_bad_configuration():
    assert pool(torch.ones(1, 2, 9, 8, 7), 2).shape == (1, 2, 5, 4, 4)
    with pytest.raises(RegframeInputError, match="levels"):
        CorrelationPyramidEstimator(levels=(2, 1), radii=(2,))
    with pytest.raises(RegframeInputError, match="image_resample_factor"):
        CorrelationPyramidEstimator(image_resample_factor=0.4)
    with pytest.raises(RegframeInputError, match="similarity"):
        InstanceOptimisation(similarity="ncc")
    with pytest.raises(RegframeInputError, match="share a grid"):
        CorrelationPyramidEstimator()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 6))


@pytest.mark.parametrize("spec", ["pyramid_mind", "pyramid_mind_two_pass"])
def test_field_is_invariant_to_affine_intensity_changes(spec):
    """Raw HU and normalised CT give the same field: MIND divides by its local variance and the Adam
    foreground threshold is relative to the image's minimum and 99th percentile."""
    torch.manual_seed(0)
    fixed = box_filter(torch.rand(1, 1, 32, 28, 36), 3)
    moving = torch.roll(fixed, (2, -1, 1), (2, 3, 4))
    estimator = build_training_free(spec)
    normalised = estimator(fixed, moving)
    raw_hu = estimator(fixed * 1500 - 1024, moving * 1500 - 1024)
    assert normalised.abs().max() > 1.0
    assert torch.allclose(normalised, raw_hu, atol=1e-4)
