"""PseudoLabelStore: fp16 memory-mapped stages, atomic commits, reopening at a recorded stage;
generate_pseudo_labels and PseudoLabelRefresh write what ``refine`` of the network returns."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.pseudo_labels import PseudoLabelRefresh
from regframe.errors import RegframeInputError
from regframe.pseudo_labels import PseudoLabelStore, generate_pseudo_labels


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


def refined_fields(estimator, data, size, batch):
    """``(before_adam, after_adam)`` of every training pair from ``refine`` called directly on the
    same batches of consecutive pairs (Adam IO couples the pairs of a batch): the known answer."""
    estimator.eval()
    images, pairs = [s["image"] for s in data.train_subjects], data.train_pairs
    fields = []
    for start in range(0, len(pairs), batch):
        group = pairs[start:start + batch]
        before, after = estimator.refine(torch.stack([images[f] for f, _ in group]),
                                         torch.stack([images[m] for _, m in group]), size)
        fields += [(before[i:i + 1], after[i:i + 1]) for i in range(len(group))]
    return fields


def test_generate_pseudo_labels_stores_refined_fields(tmp_path, tiny_cst, random_subjects):
    estimator, pairs = tiny_cst.estimator, random_subjects.train_pairs
    store = PseudoLabelStore(tmp_path, len(pairs), (3, 8, 8, 8))
    images = [s["image"] for s in random_subjects.train_subjects]
    difficulty = generate_pseudo_labels(estimator, images, pairs, store, 3, (8, 8, 8), batch=4)
    assert store.served_stage == 3 and estimator.training  # mode restored
    for k, (before, after) in enumerate(refined_fields(estimator, random_subjects, (8, 8, 8), batch=4)):
        torch.testing.assert_close(store.read([k]), after, atol=2e-3, rtol=1e-3)  # float16 on disk
        torch.testing.assert_close(difficulty[k], (after - before).norm(dim=1).mean(), atol=1e-6, rtol=1e-5)
    assert difficulty.min() > 0
    torch.testing.assert_close(store.difficulty(), difficulty)


class Shift(torch.nn.Module):
    """An estimator without ``refine``: the same shift ``(1, 2, -4)`` voxels everywhere."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor([1.0, 2.0, -4.0]))

    def forward(self, fixed, moving):
        return self.shift.view(1, 3, 1, 1, 1).expand(fixed.shape[0], 3, *fixed.shape[2:])


def test_generate_pseudo_labels_without_refine_resizes_the_field(tmp_path, random_subjects):
    store = PseudoLabelStore(tmp_path, 6, (3, 8, 8, 8))
    images = [s["image"] for s in random_subjects.train_subjects]
    difficulty = generate_pseudo_labels(Shift(), images, random_subjects.train_pairs, store, 0, (8, 8, 8))
    # half the grid: the same motion is half as many voxels; no refinement, so no difficulty
    torch.testing.assert_close(store.read(range(6)), torch.tensor([0.5, 1.0, -2.0]).view(1, 3, 1, 1, 1).expand(6, 3, 8, 8, 8))
    assert difficulty.tolist() == [0.0] * 6


class Listener(Callback):
    def __init__(self):
        self.calls = []

    def on_pseudo_labels(self, trainer, pl_module, stage, difficulty):
        self.calls.append((stage, difficulty.clone()))


def test_refresh_writes_refine_of_the_current_network(tiny_cst, random_subjects):
    listener = Listener()
    trainer = SimpleNamespace(datamodule=random_subjects, reload_dataloaders_every_n_epochs=2, current_epoch=0,
                              callbacks=[listener])
    refresh = PseudoLabelRefresh(evaluate_stage0=False)
    refresh.on_fit_start(trainer, tiny_cst)  # stage 0: the random network
    stage0 = refined_fields(tiny_cst.random_stage0_estimator(), random_subjects, (8, 8, 8), batch=2)
    assert tiny_cst.store.served_stage == 0
    for k, (_, after) in enumerate(stage0):
        torch.testing.assert_close(tiny_cst.store.read([k]), after, atol=2e-3, rtol=1e-3)
    refresh.on_train_epoch_end(trainer, tiny_cst)  # epoch 0 is no stage end: nothing new
    assert tiny_cst.store.served_stage == 0 and [s for s, _ in listener.calls] == [0]
    with torch.no_grad():  # "training": the network changes
        for parameter in tiny_cst.estimator.parameters():
            parameter.mul_(1.5)
    trainer.current_epoch = 1  # end of training stage 1: labels of stage 1 from the current network
    refresh.on_train_epoch_end(trainer, tiny_cst)
    stage1 = refined_fields(tiny_cst.estimator, random_subjects, (8, 8, 8), batch=2)
    assert tiny_cst.store.served_stage == 1 and [s for s, _ in listener.calls] == [0, 1]
    for k, (before, after) in enumerate(stage1):
        torch.testing.assert_close(tiny_cst.store.read([k]), after, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(listener.calls[1][1][k], (after - before).norm(dim=1).mean(), atol=1e-6, rtol=1e-5)
    assert (tiny_cst.store.read(range(6)) - torch.cat([a for _, a in stage0])).abs().max() > 0.01
    trainer.current_epoch = 5  # end of the last stage: no labels are needed any more
    refresh.on_train_epoch_end(trainer, tiny_cst)
    assert tiny_cst.store.stage == 1 and len(listener.calls) == 2


@pytest.mark.parametrize("terminal", [True, False])
def test_generation_shows_progress_only_on_a_terminal(tmp_path, random_subjects, monkeypatch, terminal):
    import io

    from rich.console import Console

    import regframe.pseudo_labels

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=terminal, width=100)
    monkeypatch.setattr(regframe.pseudo_labels, "get_console", lambda: console)
    store = PseudoLabelStore(tmp_path, 6, (3, 8, 8, 8))
    images = [s["image"] for s in random_subjects.train_subjects]
    generate_pseudo_labels(Shift(), images, random_subjects.train_pairs, store, 0, (8, 8, 8), batch=4)
    shown = stream.getvalue()
    if terminal:  # 6 pairs in batches of 4: the bar reaches 6/6
        assert "pseudo labels, stage 0" in shown and "6/6" in shown
    else:
        assert shown == ""
