"""StageSchedule (epoch -> stage), the optimiser-step count of an epoch and the Protocol check."""

from types import SimpleNamespace

import pytest

from regframe.stages import SelfTraining, Stage, StageSchedule, Staged, optimizer_steps_per_epoch, require


def test_repeated_schedule_known_stages():
    schedule = StageSchedule.repeated("self_training", 3, 6)
    assert len(schedule) == 3 and schedule.total_epochs == 18
    assert schedule.stage_at(0) == Stage(0, "self_training", 0, 6)
    assert schedule.stage_at(5).index == 0 and schedule.stage_at(6) == Stage(1, "self_training", 6, 12)
    assert schedule.stage_at(17) == Stage(2, "self_training", 12, 18) and schedule.stage_at(17).epochs == 6
    assert schedule.stage_at(40).index == 2  # after the plan: the last stage
    assert [e for e in range(18) if schedule.is_stage_end(e)] == [5, 11, 17]
    assert [e for e in range(18) if schedule.is_stage_start(e)] == [0, 6, 12]


def test_named_stages_of_different_lengths():
    schedule = StageSchedule([("seg_pretrain", 2), ("reg_pretrain", 3), ("round", 1)])
    assert [schedule.stage_at(e).name for e in range(6)] == ["seg_pretrain"] * 2 + ["reg_pretrain"] * 3 + ["round"]
    assert [s.start for s in schedule.stages] == [0, 2, 5] and schedule.total_epochs == 6
    assert repr(schedule) == "StageSchedule([('seg_pretrain', 2), ('reg_pretrain', 3), ('round', 1)])"


def test_schedule_errors():
    with pytest.raises(ValueError, match="at least one stage"):
        StageSchedule([])
    with pytest.raises(ValueError, match="at least one stage"):
        StageSchedule.repeated("self_training", 0, 5)
    with pytest.raises(ValueError, match=r"stage 1 \('b'\) must last at least 1 epoch, got 0"):
        StageSchedule([("a", 2), ("b", 0)])


def fake_trainer(batches: int, limit: int | float = 1.0, accumulate: int = 1) -> SimpleNamespace:
    datamodule = SimpleNamespace(train_dataloader=lambda: range(batches))
    return SimpleNamespace(datamodule=datamodule, limit_train_batches=limit, accumulate_grad_batches=accumulate)


def test_optimizer_steps_per_epoch_counts_like_lightning():
    assert optimizer_steps_per_epoch(fake_trainer(23)) == 23
    assert optimizer_steps_per_epoch(fake_trainer(23, limit=5)) == 5
    assert optimizer_steps_per_epoch(fake_trainer(23, limit=0.5)) == 11  # int(23 * 0.5)
    assert optimizer_steps_per_epoch(fake_trainer(23, accumulate=4)) == 6  # ceil(23 / 4)
    with pytest.raises(ValueError, match="no batches"):
        optimizer_steps_per_epoch(fake_trainer(23, limit=0.01))


def test_require_names_the_missing_members():
    staged = SimpleNamespace(schedule=StageSchedule.repeated("s", 2, 1), stage_dice={})
    require(staged, Staged, "SelfTrainingStages")
    with pytest.raises(TypeError, match=r"SelfTrainingStages needs a Staged module; SimpleNamespace lacks \['stage_dice'\]"):
        require(SimpleNamespace(schedule=staged.schedule), Staged, "SelfTrainingStages")
    with pytest.raises(TypeError) as error:
        require(staged, SelfTraining, "PseudoLabelRefresh")
    assert ("['generate_pseudo_labels', 'mean_val_dice', 'open_pseudo_labels', 'random_stage0_estimator']"
            in str(error.value))
    with pytest.raises(TypeError, match=r"lacks \['generate_pseudo_labels', .*'schedule', 'stage_dice'\]"):
        require(SimpleNamespace(), SelfTraining, "PseudoLabelRefresh")
