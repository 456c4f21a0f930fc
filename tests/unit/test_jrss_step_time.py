"""The JRSS step-time benchmark: the full plan it projects from, and steps timed by stage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def step_time(benchmark_script):
    return benchmark_script("jrss_step_time")


def test_full_plan_counts_each_stage_kind_over_the_rounds(step_time):
    epochs, steps_per_epoch = step_time.full_plan("experiments/prostate_jrss.yaml")
    # seg_pretrain 30, reg_pretrain 15, 3 rounds x (5 registration + 1 student), 16 steps per epoch
    assert epochs == {"seg_pretrain": 30, "reg_pretrain": 15, "reg_joint": 15, "student": 3}
    assert steps_per_epoch == 16


def test_step_timer_files_each_step_under_the_module_stage(step_time, monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 22.0, 30.0, 33.0])
    monkeypatch.setattr(step_time.time, "perf_counter", lambda: next(clock))
    timer = step_time.StepTimer()
    for stage in ("seg_pretrain", "seg_pretrain", "student"):
        module = SimpleNamespace(stage=stage)
        timer.on_train_batch_start(None, module, None, 0)
        timer.on_train_batch_end(None, module, None, None, 0)
    assert dict(timer.seconds) == {"seg_pretrain": [0.5, 2.0], "student": [3.0]}
