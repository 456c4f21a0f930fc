"""The LPBA40 Mono-Seg probe's teacher statistics on a segmenter with known probabilities."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def probe(benchmark_script):
    return benchmark_script("jrss_lpba40_mono_seg_probe")


class Flooding(torch.nn.Module):
    """Class 1 with probability 0.8 on the first 6 of 8 voxels, background with 0.6 on the last 2 (3 classes)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = torch.tensor([[0.1, 0.8, 0.1]] * 6 + [[0.6, 0.2, 0.2]] * 2).T.reshape(1, 3, 2, 2, 2)
        return probs.log()


def test_teacher_statistics_of_a_flooding_segmenter(probe):
    # truth: voxels 0-1 class 1, 2-3 class 2, 4-7 background; class 1 floods voxels 2-5
    truth = torch.tensor([1, 1, 2, 2, 0, 0, 0, 0]).reshape(1, 2, 2, 2)
    stats = probe.teacher_statistics(Flooding(), [{"image": torch.zeros(1, 2, 2, 2), "label": truth}], tau=0.7)
    assert stats["dice"] == pytest.approx((2 * 2 / (6 + 2) + 0.0) / 2)       # class 1: 2·2/(6+2); class 2: 0
    assert stats["foreground_kept"] == 1.0 and stats["background_kept"] == 0.5   # only the 0.8 voxels pass τ
    assert stats["kept_accuracy"] == pytest.approx(2 / 6)
    assert stats["background_confidence"] == pytest.approx((0.8 + 0.8 + 0.6 + 0.6) / 4)
    assert stats["largest_flood_voxels"] == 2
