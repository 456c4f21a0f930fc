"""SAM-style embedding network, pixel InfoNCE and the pre-training module on tiny volumes."""

from __future__ import annotations

import math

import torch

import pytest

from regframe.errors import RegframeInputError
from regframe.features.embedding import AnatomicalEmbedding, PretrainedEmbedding
from regframe.losses_contrastive import pixel_infonce
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


def test_infonce_prefers_the_true_correspondence():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(32, 10, 12, 9), dim=0)
    crop_a, crop_b = emb[:, 2:8, 1:9, :], emb[:, 0:9, 3:12, 1:9]  # a[p] = b[p + (2, -2, -1)]
    generator = torch.Generator().manual_seed(0)
    right = pixel_infonce(crop_a, crop_b, (2, -2, -1), num_points=32, generator=generator)
    wrong = pixel_infonce(crop_a, crop_b, (0, 0, 0), num_points=32, generator=generator)
    assert right < wrong
    assert right < math.log(1 + 64) < wrong  # log(1 + k): the positive is no better than the k negatives


def test_infonce_without_overlap_is_zero_with_graph():
    a = torch.randn(3, 4, 4, requires_grad=True)
    loss = pixel_infonce(a, torch.randn(3, 4, 4), (10, 0))
    assert loss.item() == 0.0 and loss.requires_grad


def test_pretraining_step_has_gradients_and_views_correspond():
    torch.manual_seed(0)
    module = AnatomicalEmbeddingPretraining(**SMALL, crop_size=(16, 16, 16), num_points=16, num_negatives=8)
    scan = torch.randn(1, 24, 24, 32)
    _, _, shift = module._views(scan)
    assert all(s % module.global_stride == 0 and abs(s) <= 8 for s in shift)
    loss = module.training_step({"fixed": scan[None], "moving": scan[None].flip(2)}, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.embedding.local_head.parameters())


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
