"""The LPBA40 τ sweep: its table's paired differences against τ = 0.7, its registration score on a known
field, and a seed's pre-training claimed by one process only."""

from __future__ import annotations

import json
import threading

import pytest
import torch


@pytest.fixture(scope="module")
def sweep(benchmark_script):
    return benchmark_script("jrss_lpba40_tau_sweep")


def record(seed: int, tau: float, seg: float, reg: float) -> dict:
    statistics = {"dice": seg, "background_kept": 0.5, "foreground_kept": 0.9, "kept_accuracy": 0.95}
    return {"seed": seed, "tau": tau, "joint_train_s": 120.0, "unlabelled_training": statistics,
            "validation": statistics, "reg_dice_unlabelled_training": reg, "reg_dice_validation": reg}


def test_table_gives_each_tau_against_the_shipped_one_per_seed(sweep, tmp_path):
    rows = [record(0, 0.7, 0.60, 0.50), record(1, 0.7, 0.62, 0.52), record(2, 0.7, 0.64, 0.54),
            record(0, 0.5, 0.70, 0.50), record(1, 0.5, 0.73, 0.52), record(2, 0.5, 0.73, 0.54)]
    path = tmp_path / "tau.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    lines = sweep.table(path).splitlines()
    assert lines[2].startswith("| 0.5 | 3 | 0.7200 ± 0.0173 |") and lines[2].endswith("| 2.0000 ± 0.0000 |")
    difference = next(line for line in lines if line.startswith("| 0.5 − 0.7 | seg Dice, unlabelled training |"))
    # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01, t(0.975, 2) = 4.303 -> half-width 0.0248
    assert "+0.1000 / +0.1100 / +0.0900 | +0.1000 | [+0.0752, +0.1248]" in difference
    registration = next(line for line in lines if "0.5 − 0.7 | reg Dice" in line)
    assert "| +0.0000 | [+0.0000, +0.0000] |" in registration


class Shift(torch.nn.Module):
    """The field that moves every voxel by one voxel along the first axis."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        field = torch.zeros(1, 3, *fixed.shape[2:])
        field[:, 0] = 1.0
        return field


def test_registration_dice_of_a_known_shift(sweep):
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, 2:4, 2:6, 2:6] = 1                            # a 2-voxel slab: shifted by one it overlaps by half
    subject = {"image": torch.zeros(1, 8, 8, 8), "label": label, "spacing": torch.ones(3)}
    moved = {**subject, "label": torch.roll(label, 1, dims=1)}   # moving = fixed shifted by +1: warp undoes it
    assert sweep.registration_dice(Shift(), [subject, moved], [(0, 1)]) == pytest.approx(1.0)
    assert sweep.registration_dice(Shift(), [subject, subject], [(0, 1)]) == pytest.approx(0.5)


def test_a_seeds_pretraining_is_claimed_once_and_waited_for(sweep, tmp_path, monkeypatch):
    trained = []

    class FakeCLI:
        def __init__(self, args, run):
            self.trainer = self
            self.model = self.datamodule = None

        def fit(self, model, datamodule):
            trained.append(1)

        def save_checkpoint(self, path):
            path.write_text("weights")

    monkeypatch.setattr(sweep, "RegframeCLI", FakeCLI)
    (tmp_path / "pretrain_0").mkdir()
    (tmp_path / "pretrain_0" / "claimed").touch()          # another process claimed seed 0
    waiting = threading.Thread(target=sweep.pretrained_checkpoint, args=(0, tmp_path, 0.01))
    waiting.start()
    assert sweep.pretrained_checkpoint(1, tmp_path) == tmp_path / "pretrain_1" / "pretrained.ckpt"
    assert trained == [1] and waiting.is_alive()            # seed 1 trained here; seed 0 is waited for
    (tmp_path / "pretrain_0" / "pretrained.ckpt").write_text("weights")
    waiting.join(timeout=5)
    assert not waiting.is_alive() and trained == [1]
