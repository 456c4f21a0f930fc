"""PseudoLabelStore: fp16 memory-mapped stages, atomic commits, reopening at a recorded stage."""

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.pseudo_labels import PseudoLabelStore


def test_write_commit_read_and_reopen(tmp_path):
    store = PseudoLabelStore(tmp_path / "pl", num_pairs=3, shape=(3, 4, 5, 6))
    assert store.stage is None
    fields = torch.randn(3, 3, 4, 5, 6)
    writer = store.begin_stage(0)
    writer.write([2, 0], fields[[2, 0]], difficulty=torch.tensor([0.3, 0.1]))
    with pytest.raises(RegframeInputError, match="misses pairs"):
        writer.commit()
    writer.write([1], fields[[1]], difficulty=torch.tensor([0.2]))
    writer.commit()
    assert store.stage == 0 and not list((tmp_path / "pl").glob(".*tmp*"))
    torch.testing.assert_close(store.read(torch.tensor([1, 2])), fields[[1, 2]], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(store.difficulty(), torch.tensor([0.1, 0.2, 0.3]))
    second = store.begin_stage(1)
    second.write([0, 1, 2], 2 * fields)
    # an uncommitted stage is invisible: the store still serves stage 0
    assert PseudoLabelStore(tmp_path / "pl", 3, (3, 4, 5, 6)).stage == 0
    second.commit()
    reopened = PseudoLabelStore(tmp_path / "pl", 3, (3, 4, 5, 6))
    assert reopened.stage == 1 and reopened.stages() == [0, 1]
    reopened.use_stage(0)  # e.g. a checkpoint taken during stage 1 training on stage-0 labels
    torch.testing.assert_close(reopened.read([0]), fields[[0]], atol=1e-2, rtol=1e-2)
    assert reopened.read([0]).dtype == torch.float32


def test_old_stages_are_pruned_and_shape_checked(tmp_path):
    store = PseudoLabelStore(tmp_path, num_pairs=1, shape=(2, 3, 3), keep=2)
    for stage in range(3):
        writer = store.begin_stage(stage)
        writer.write([0], torch.full((1, 2, 3, 3), float(stage)))
        writer.commit()
    assert store.stages() == [1, 2] and not (tmp_path / "stage_00.npy").exists()
    with pytest.raises(RegframeInputError, match="stage 0"):
        store.use_stage(0)
    with pytest.raises(RegframeInputError, match="expected 2"):
        PseudoLabelStore(tmp_path, num_pairs=2, shape=(2, 3, 3))


def test_fresh_store_forgets_an_earlier_run(tmp_path):
    old = PseudoLabelStore(tmp_path, num_pairs=2, shape=(2, 3, 3))
    writer = old.begin_stage(4)
    writer.write([0, 1], torch.ones(2, 2, 3, 3))
    writer.commit()
    # a new run with another pair count reusing the directory: no shape error, nothing served
    fresh = PseudoLabelStore(tmp_path, num_pairs=5, shape=(2, 3, 3), fresh=True)
    assert fresh.stage is None and fresh.served_stage is None and fresh.stages() == []
    assert not (tmp_path / "stage_04.npy").exists()
    with pytest.raises(RegframeInputError, match="nothing stored"):
        fresh.read([0])
