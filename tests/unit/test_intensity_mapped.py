"""IntensityMapped hands the wrapped estimator the preprocessing's intensities; TwoStep composes it with raw-image steps."""

from __future__ import annotations

import torch

from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.intensity_mapped import IntensityMapped
from regframe.estimators.protocols import unwrapped
from regframe.estimators.two_step import TwoStep
from regframe.preprocess import Preprocessing


class Recording(DisplacementEstimator):
    """Returns a constant shift of +1 voxel along axis 0 and records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        self.seen.append((fixed.clone(), moving.clone()))
        field = fixed.new_zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
        field[:, 0] = 1.0
        return field


def test_the_wrapped_estimator_sees_mapped_intensities_and_its_field_is_returned():
    inner = Recording()
    mapped = IntensityMapped(inner, Preprocessing(clamp=(-200.0, 300.0), shift=100.0, scale=0.01))
    fixed = torch.tensor([-1000.0, -200.0, 0.0, 300.0, 2000.0]).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 3).contiguous()
    field = mapped(fixed, fixed.flip(2))
    expected = torch.tensor([-1.0, -1.0, 1.0, 4.0, 4.0]).view(1, 1, 5, 1, 1)   # (clip(x) + 100) / 100
    torch.testing.assert_close(inner.seen[0][0], expected.expand_as(fixed))
    torch.testing.assert_close(inner.seen[0][1], expected.flip(2).expand_as(fixed))
    assert bool((field[:, 0] == 1).all()) and bool((field[:, 1:] == 0).all())
    assert unwrapped(mapped)[-1] is inner


def test_two_step_gives_the_raw_step_raw_images():
    first, second = Recording(), Recording()
    fixed = torch.rand(1, 1, 6, 5, 4) * 1000
    TwoStep(IntensityMapped(first, Preprocessing(scale=0.001)), second)(fixed, fixed)
    torch.testing.assert_close(first.seen[0][0], fixed * 0.001)
    torch.testing.assert_close(second.seen[0][0], fixed)       # the second step reads raw intensities
