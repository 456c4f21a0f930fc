"""Difficulty weights and the per-stage cosine learning rate."""

import math

import torch

from callbacks.sampling import difficulty_weights
from callbacks.stages import SelfTrainingStages, cosine_lr, stage_table


def test_difficulty_weights_favour_easy_pairs():
    difficulty = torch.tensor([0.5, 0.1, 0.9, 0.3])
    weights = difficulty_weights(difficulty)
    assert torch.argsort(weights, descending=True).tolist() == [1, 3, 0, 2]
    assert math.isclose(weights.max().item(), 1 / (1 + math.exp(-5)))
    assert math.isclose(weights.min().item(), 1 / (1 + math.exp(5)))


def test_cosine_restarts_every_stage():
    stages = SelfTrainingStages(lr_max=1e-3, lr_min=1e-5)
    assert math.isclose(cosine_lr(0.0, 1e-3, 1e-5), 1e-3) and math.isclose(cosine_lr(1.0, 1e-3, 1e-5), 1e-5)
    lrs = [stages.lr_at(step, 5) for step in range(10)]
    assert lrs[0] == lrs[5] == 1e-3 and math.isclose(lrs[4], 1e-5) and math.isclose(lrs[9], 1e-5)
    assert all(a > b for a, b in zip(lrs[:4], lrs[1:5]))
    assert "| 2 | 0.5000 |" in stage_table({0: 0.25, 2: 0.5})
