"""CST's learning-stream loss against a hand-built target: a network that predicts a constant field
``c`` (image voxels) and a zero target on the label grid give the mean end-point error in mm
``mean_b ||c * spacing_b||`` over the cropped label grid; the target's border is ignored."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.estimators.refine import Refined
from regframe.methods.cyclical import CyclicalSelfTraining
from regframe.optim.instance import InstanceOptimisation


class ConstantField(nn.Module):
    """Predicts the same displacement ``c`` (voxels of the image grid) everywhere; ``c`` is trained."""

    def __init__(self, vector: list[float]) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.tensor(vector))

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        dims = fixed.dim() - 2
        return self.vector.view(1, dims, *([1] * dims)).expand(fixed.shape[0], dims, *fixed.shape[2:])


def test_loss_is_the_mean_epe_in_mm_over_the_cropped_label_grid():
    c = [1.0, -2.0, 0.5]
    cst = CyclicalSelfTraining(Refined(ConstantField(c), InstanceOptimisation(iterations=0)), augment=False,
                               label_resample_factor=0.5, loss_crop=2, compute_hd95=False)
    images = torch.rand(2, 1, 16, 16, 16)
    spacing = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.5, 3.0]])  # mm per image voxel, per pair
    target = torch.zeros(2, 3, 8, 8, 8)  # label grid: 16 x 0.5, vectors in label voxels
    target[:, :, :2] = 100.0  # the cropped border (2 label voxels) must not count
    target[:, :, :, :, -2:] = -100.0
    loss = cst.pseudo_label_loss(images, images, target, spacing)
    # c image voxels are c/2 label voxels, and a label voxel is 2 x spacing mm: c x spacing mm
    per_pair = [sum((ci * si) ** 2 for ci, si in zip(c, s)) ** 0.5 for s in spacing.tolist()]
    expected = sum(per_pair) / 2  # (1 + 4 + 0.25)^0.5 = 2.291 and (4 + 1 + 2.25)^0.5 = 2.693
    assert abs(loss.item() - expected) < 1e-5
    loss.backward()
    # d/dc_d mean_b ||c * s_b|| = mean_b c_d s_bd^2 / ||c * s_b||
    grad = [sum(ci * s[d] ** 2 / n for s, n in zip(spacing.tolist(), per_pair)) / 2 for d, ci in enumerate(c)]
    torch.testing.assert_close(cst.estimator.estimator.vector.grad, torch.tensor(grad), atol=1e-5, rtol=0)


def test_without_spacing_the_loss_is_in_image_voxels():
    c = [0.0, 3.0, 4.0]
    cst = CyclicalSelfTraining(Refined(ConstantField(c), InstanceOptimisation(iterations=0)), augment=False,
                               label_resample_factor=0.5, loss_crop=1, compute_hd95=False)
    images = torch.rand(1, 1, 8, 12, 10)
    loss = cst.pseudo_label_loss(images, images, torch.zeros(1, 3, 4, 6, 5))
    assert abs(loss.item() - 5.0) < 1e-5


def test_two_training_passes_train_the_network_composed_with_itself():
    """``training_passes=2``: the loss sees ``TwoStep`` of the network with shared weights; a constant
    field ``c`` composed with itself is ``2c``, so the loss is ``||2c * spacing||`` and ``c`` gets twice the gradient."""
    c = [1.0, -0.5, 0.25]
    cst = CyclicalSelfTraining(Refined(ConstantField(c), InstanceOptimisation(iterations=0)), augment=False,
                               label_resample_factor=0.5, loss_crop=2, compute_hd95=False, training_passes=2)
    images = torch.rand(1, 1, 16, 16, 16)
    loss = cst.pseudo_label_loss(images, images, torch.zeros(1, 3, 8, 8, 8))
    norm = sum((2 * ci) ** 2 for ci in c) ** 0.5
    assert abs(loss.item() - norm) < 1e-4
    loss.backward()
    torch.testing.assert_close(cst.estimator.estimator.vector.grad, torch.tensor([4 * ci / norm for ci in c]),
                               atol=1e-4, rtol=0)


def test_training_passes_other_than_one_or_two_are_refused():
    with pytest.raises(RegframeInputError, match="training_passes must be 1 or 2"):
        CyclicalSelfTraining(Refined(ConstantField([0.0, 0.0]), InstanceOptimisation(iterations=0)), training_passes=3)
