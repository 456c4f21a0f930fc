"""SAM-style embedding network, views with known correspondences, sampled-negative InfoNCE,
label retrieval and the pre-training module on tiny volumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from regframe.embedding_retrieval import retrieval_dice, retrieved_labels
from regframe.embedding_views import grid_points, random_rotation, random_view_pair, resample_view, sample_at
from regframe.errors import RegframeInputError
from regframe.features.embedding import AnatomicalEmbedding, PretrainedEmbedding
from regframe.losses_contrastive import sample_negatives, sampled_infonce
from regframe.methods.samconvex import AnatomicalEmbeddingPretraining, samconvex_pyramid

SMALL = dict(widths=(4, 6, 8), fpn_width=6, local_dim=5, global_dim=3)


def test_embedding_shapes_and_unit_length():
    net = AnatomicalEmbedding(**SMALL)
    local, coarse = net.embed(torch.randn(2, 1, 16, 24, 32))
    assert local.shape == (2, 5, 8, 12, 16) and coarse.shape == (2, 3, 2, 3, 4)
    assert torch.allclose(local.norm(dim=1), torch.ones(1), atol=1e-5)
    assert torch.allclose(coarse.norm(dim=1), torch.ones(1), atol=1e-5)
    features = net(torch.randn(1, 1, 16, 24, 32))
    assert features.shape == (1, net.out_channels, 8, 12, 16)


def test_a_view_at_unit_scale_without_rotation_is_a_crop():
    scan = torch.randn(1, 12, 10, 14)
    view = resample_view(scan, (4, 6, 5), torch.eye(3), torch.tensor([5.5, 4.5, 6.0]))  # centre of 4x6x5 is (1.5, 2.5, 2)
    torch.testing.assert_close(view.image, scan[:, 4:8, 2:8, 4:9])
    points = torch.tensor([[0.0, 0.0, 0.0], [3.0, 5.0, 4.0]])
    torch.testing.assert_close(view.to_scan(points), points + torch.tensor([4.0, 2.0, 4.0]))
    torch.testing.assert_close(view.from_scan(view.to_scan(points)), points)


@pytest.mark.parametrize("dims", [2, 3])
def test_view_pairs_correspond_through_the_scan_at_any_scale_and_rotation(dims):
    """On a linear ramp image interpolation is exact: a point of view A and its partner in view B
    carry the value of the ramp at the same scan point."""
    shape = (40, 36, 44)[:dims]
    weights = torch.tensor([1.0, 2.0, 3.0][:dims])
    ramp = (grid_points(shape) @ weights).view(1, *shape)
    generator = torch.Generator().manual_seed(0)
    view_a, view_b = random_view_pair(ramp, (16,) * dims, (0.7, 1.4), 25.0, 0.4, generator=generator)
    assert not torch.allclose(view_a.matrix, torch.eye(dims))
    points = grid_points((16,) * dims)[::3]
    scan_points = view_a.to_scan(points)
    keep = ((scan_points >= 0) & (scan_points <= torch.tensor(shape) - 1)).all(1)
    partner = view_b.from_scan(scan_points)
    keep &= view_b.contains(partner) & ((view_b.to_scan(partner) - scan_points).abs().max(1).values < 1e-3)
    assert keep.sum() > 20
    value_a = sample_at(view_a.image, points[keep])[:, 0]
    value_b = sample_at(view_b.image, partner[keep])[:, 0]
    torch.testing.assert_close(value_a, scan_points[keep] @ weights, atol=1e-3, rtol=0)
    torch.testing.assert_close(value_b, value_a, atol=1e-3, rtol=0)
    rotation = random_rotation(dims, 30.0, generator)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(dims), atol=1e-6, rtol=0)


def test_negatives_come_from_valid_candidates_and_the_hard_pool():
    generator = torch.Generator().manual_seed(0)
    ranking = torch.arange(20.0).repeat(3, 1)          # candidate 19 ranks best
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[:, 15:] = False                               # the five best are excluded (ignore radius)
    hard = sample_negatives(valid, ranking, num_hard=4, hard_pool=6, num_random=0, generator=generator)
    assert hard.shape == (3, 4) and bool(((hard >= 9) & (hard <= 14)).all())   # the 6 best valid: 9..14
    assert all(len(set(row.tolist())) == 4 for row in hard)                    # without replacement
    both = sample_negatives(valid, ranking, num_hard=2, hard_pool=6, num_random=50, generator=generator)
    assert both.shape == (3, 52) and bool((both < 15).all())
    assert len(set(both[:, 2:].flatten().tolist())) > 10                       # uniform over the valid ones
    only_one = torch.zeros(1, 20, dtype=torch.bool)
    only_one[0, 3] = True
    assert sample_negatives(only_one, ranking[:1], 4, 6, 2, generator).tolist() == [[3] * 6]
    with pytest.raises(ValueError, match="valid candidate"):
        sample_negatives(torch.zeros(1, 5, dtype=torch.bool), None, 0, 1, 1)


def test_sampled_infonce_matches_the_formula_and_a_collapsed_embedding_has_no_gap():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.8, 0.6]])
    negatives = torch.tensor([[1, 2], [0, 1]])
    loss, gap = sampled_infonce(anchors, positives, candidates, negatives, temperature=0.5)
    first = -math.log(math.exp(0.6 / 0.5) / (math.exp(0.6 / 0.5) + math.exp(0.0) + math.exp(0.8 / 0.5)))
    second = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(-2.0)))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert gap.item() == pytest.approx(((0.6 - 0.4) + (1.0 - (-0.5))) / 2, rel=1e-6)
    constant = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    loss, gap = sampled_infonce(constant, constant, constant, torch.zeros(4, 5, dtype=torch.long))
    assert loss.item() == pytest.approx(math.log(6.0)) and gap.item() == pytest.approx(0.0, abs=1e-6)


def test_retrieval_dice_is_one_for_anatomy_coding_features_and_low_for_a_constant():
    labels_a = torch.tensor([[0, 1, 1], [2, 2, 0]])
    labels_b = torch.tensor([[2, 0, 1], [1, 0, 2]])
    one_hot = lambda labels: torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float()  # noqa: E731
    assert retrieval_dice(one_hot(labels_a), one_hot(labels_b), labels_a, labels_b) == {1: 1.0, 2: 1.0}
    constant = torch.ones(4, 2, 3)
    retrieved = retrieved_labels(constant, constant, labels_b)
    assert bool((retrieved == retrieved.flatten()[0]).all())                    # one label everywhere
    scores = retrieval_dice(constant, constant, labels_a, labels_b)
    expected = {int(retrieved[0, 0]): 2 * 2 / (2 + 6)} if int(retrieved[0, 0]) else {}
    assert {k: v for k, v in scores.items() if v > 0} == expected


def test_pretraining_step_has_gradients_and_logs_the_collapse_monitor():
    torch.manual_seed(0)
    module = AnatomicalEmbeddingPretraining(**SMALL, crop_size=(16, 16, 16), num_points=16, num_hard=4,
                                            hard_pool=16, num_random=8, hard_negative_start=0)
    assert isinstance(module.embedding.stem[1], torch.nn.GroupNorm)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (24, 24, 32)], indexing="ij"))
    body = (grid.pow(2).sum(0) < 0.8).float()[None]                  # foreground blob in air
    scans = torch.stack([body * (1 + 0.2 * torch.randn(1, 24, 24, 32)), body.flip(2)])
    parts = module.contrastive_losses(scans, torch.tensor([[2.0, 2.0, 2.0]] * 2))
    assert set(parts) == {"local", "global", "gap_local", "gap_global", "local_spatial_std"}
    assert parts["local_spatial_std"] > 0
    (parts["local"] + parts["global"]).backward()
    assert torch.isfinite(parts["local"]) and torch.isfinite(parts["global"])
    assert all(p.grad is not None for p in module.embedding.local_head.parameters())
    assert all(p.grad is not None for p in module.embedding.global_head.parameters())
    with pytest.raises(RegframeInputError, match="no foreground anchor"):
        module.contrastive_losses(torch.zeros(2, 1, 24, 24, 32), torch.ones(2, 3))


def test_a_view_pair_without_anchors_is_redrawn(monkeypatch):
    """A draw whose views share no foreground (rare under random offsets and rotations) is replaced by
    a new draw instead of failing the step."""
    module = AnatomicalEmbeddingPretraining(**SMALL, crop_size=(16, 16, 16), num_points=16)
    scan = torch.rand(1, 24, 24, 32)
    draws, anchors = [], module.anchors

    def first_draw_empty(*args):
        draws.append(args)
        points, partners = anchors(*args)
        return (points[:0], partners[:0]) if len(draws) == 1 else (points, partners)

    monkeypatch.setattr(module, "anchors", first_draw_empty)
    (view_a, _), (points, partners) = module.views_with_anchors(scan)
    assert len(draws) == 2 and draws[1][1] is view_a
    assert points.shape == partners.shape and points.shape[0] == 16


def test_checkpoint_round_trip_builds_a_working_estimator(tmp_path):
    module = AnatomicalEmbeddingPretraining(**SMALL)
    path = tmp_path / "emb.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "preprocessing": {"resample_factor": 0.5, "clamp": [-1.0, 1.0], "scale": 2.0}}, path)
    features = PretrainedEmbedding(str(path))
    assert features.preprocessing.resample_factor == 0.5
    assert features.preprocessing.intensity(torch.tensor([3.0, 0.25])).tolist() == [2.0, 0.5]
    for a, b in zip(features.embedding.parameters(), module.embedding.parameters()):
        assert torch.equal(a, b) and not a.requires_grad
    estimator = samconvex_pyramid(features, levels=(2, 1), radii=(1, 1))
    image = torch.randn(1, 1, 16, 16, 16)
    assert estimator(image, image.roll(1, 2)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(RegframeInputError, match="checkpoint not found"):
        PretrainedEmbedding(str(tmp_path / "missing.ckpt"))
    # checkpoints made before the norm option hold instance-norm networks
    old = AnatomicalEmbedding(**SMALL, norm="instance")
    hyper_parameters = {k: v for k, v in module.hparams.items() if k != "norm"}
    torch.save({"hyper_parameters": hyper_parameters, "state_dict": {f"embedding.{k}": v for k, v in old.state_dict().items()},
                "preprocessing": {"resample_factor": 0.5}}, path)
    loaded = PretrainedEmbedding(str(path)).embedding
    assert isinstance(loaded.stem[1], torch.nn.InstanceNorm3d)
    with pytest.raises(RegframeInputError, match="norm must be one of"):
        AnatomicalEmbedding(norm="batch")


def test_retrieval_benchmark_table_gives_mean_and_sd_per_extractor(benchmark_script, tmp_path):
    retrieval = benchmark_script("sam_embedding_retrieval")
    out = tmp_path / "rows.jsonl"
    rows = [{"pair": p, "features": name, "dice": dice} for p, name, dice in
            (("a", "MIND", 0.1), ("b", "MIND", 0.3), ("a", "trained", 0.5), ("b", "trained", 0.5))]
    out.write_text("\n".join(json.dumps(r) for r in rows))
    lines = retrieval.table(out).splitlines()
    assert lines[2] == "| MIND | 2 | 0.2000 ± 0.1414 |" and lines[3] == "| trained | 2 | 0.5000 ± 0.0000 |"
