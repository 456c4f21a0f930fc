"""ReuseFeatures: one extraction per live, unmodified image; never a shared autograd graph."""

import gc

import torch
from torch import nn

from regframe.estimators.pyramid import mind_pyramid
from regframe.estimators.registry import build_training_free, pyramid_mind
from regframe.estimators.two_step import TwoStep
from regframe.features.reuse import ReuseFeatures


class CountingDouble(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.weight = nn.Parameter(torch.tensor(2.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return image * self.weight


def test_same_image_is_extracted_once_and_other_images_again() -> None:
    extractor = CountingDouble()
    reuse = ReuseFeatures(extractor)
    a, b = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    with torch.no_grad():
        first = reuse(a)
        assert reuse(a) is first and extractor.calls == 1
        assert torch.equal(reuse(b), 2 * b) and extractor.calls == 2
        assert torch.equal(reuse(a.clone()), 2 * a) and extractor.calls == 3  # equal values, another tensor


def test_in_place_change_and_garbage_collection_invalidate() -> None:
    extractor = CountingDouble()
    reuse = ReuseFeatures(extractor)
    image = torch.ones(1, 1, 3, 3)
    with torch.no_grad():
        reuse(image)
        image.mul_(3)
        assert torch.equal(reuse(image), torch.full((1, 1, 3, 3), 6.0)) and extractor.calls == 2
    del image
    gc.collect()
    assert reuse._outputs == {}  # the features went with their image


def test_outputs_with_a_graph_are_not_shared() -> None:
    extractor = CountingDouble()
    reuse = ReuseFeatures(extractor)
    image = torch.rand(1, 1, 3, 3)
    reuse(image).sum().backward()
    reuse(image).sum().backward()  # a second backward through a fresh graph, not a freed one
    assert extractor.calls == 2 and torch.allclose(extractor.weight.grad, 2 * image.sum())


def test_two_pass_extracts_the_fixed_mind_once_and_matches_unshared_passes() -> None:
    torch.manual_seed(0)
    fixed = torch.rand(1, 1, 20, 18, 22)
    moving = torch.roll(fixed, shifts=(2, -1, 1), dims=(2, 3, 4))
    two_pass = build_training_free("pyramid_mind_two_pass")
    features = two_pass.first.features
    assert isinstance(features, ReuseFeatures) and two_pass.second.estimator.features is features
    calls = []
    features.extractor.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    field = two_pass(fixed, moving)
    assert len(calls) == 3 and sum(image is fixed for image in calls) == 1  # fixed, moving, warped moving
    reference = TwoStep(mind_pyramid(), pyramid_mind())(fixed, moving)
    assert torch.allclose(field, reference, atol=1e-5)
