"""On-disk store of pseudo-label displacement fields for self-training.

Layout under ``root`` (normally ``<run dir>/pseudo_labels``, never inside a checkpoint)::

    manifest.json           {"stage", "num_pairs", "shape", "dtype", "stages": {stage: file names}}
    stage_03.npy            (num_pairs, D, *S) float16, memory-mapped, row = pair index
    stage_03_difficulty.npy (num_pairs,) float32, optional per-pair difficulty

A stage is written into a temporary file and renamed into place only when complete, and the
manifest is replaced the same way, so a crash never leaves a half-written current stage. Earlier
stage files are kept (``keep`` of them), so a checkpoint that recorded an earlier stage still
resumes with exactly the labels it trained on.

:func:`generate_pseudo_labels` fills one stage of a store with an estimator's fields for every pair
(with a progress bar on a terminal).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich import get_console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from torch import Tensor, nn

from regframe.errors import RegframeInputError
from regframe.spatial import resize_field

MANIFEST = "manifest.json"


def _atomic_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class StageWriter:
    """Collects one stage's fields (opened by :meth:`PseudoLabelStore.begin_stage`)."""

    def __init__(self, store: "PseudoLabelStore", stage: int) -> None:
        self.store = store
        self.stage = stage
        self.path = store.root / f".stage_{stage:02d}.npy.tmp"
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16,
                                               shape=(store.num_pairs, *store.shape))
        self.difficulty = np.full(store.num_pairs, np.nan, dtype=np.float32)
        self.written = np.zeros(store.num_pairs, dtype=bool)

    def write(self, pair_index: Tensor | Sequence[int], fields: Tensor, difficulty: Tensor | None = None) -> None:
        """Store ``fields (B, D, *S)`` (voxels) for the pairs ``pair_index (B,)``."""
        index = np.asarray(torch.as_tensor(pair_index).cpu(), dtype=np.int64).reshape(-1)
        if tuple(fields.shape[1:]) != self.store.shape or fields.shape[0] != index.size:
            raise RegframeInputError(f"pseudo labels: fields of shape {tuple(fields.shape)} do not fit "
                                     f"{index.size} pairs of shape {self.store.shape}")
        self.array[index] = fields.detach().to("cpu", torch.float16).numpy()
        if difficulty is not None:
            self.difficulty[index] = difficulty.detach().cpu().float().numpy().reshape(-1)
        self.written[index] = True

    def commit(self) -> None:
        """Make this stage the current one (atomic); every pair must have been written."""
        if not self.written.all():
            missing = np.flatnonzero(~self.written)[:5].tolist()
            raise RegframeInputError(f"pseudo labels: stage {self.stage} misses pairs, e.g. {missing}")
        self.array.flush()
        del self.array
        self.store.commit_stage(self.stage, self.path, self.difficulty if np.isfinite(self.difficulty).all() else None)


class PseudoLabelStore:
    """Pseudo-label fields ``(D, *S)`` per training pair, one file per stage, float16 on disk.
    ``fresh=True`` forgets whatever an earlier run left in ``root`` (a new run reusing the directory)."""

    def __init__(self, root: str | Path, num_pairs: int, shape: Sequence[int], keep: int = 2,
                 fresh: bool = False) -> None:
        self.root = Path(root)
        self.num_pairs = int(num_pairs)
        self.shape = tuple(int(s) for s in shape)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = self._read_manifest()
        if fresh:
            self._clear()
        if self.manifest and (self.manifest["num_pairs"] != self.num_pairs or tuple(self.manifest["shape"]) != self.shape):
            raise RegframeInputError(
                f"pseudo labels in {self.root} hold {self.manifest['num_pairs']} pairs of shape "
                f"{tuple(self.manifest['shape'])}, expected {self.num_pairs} of {self.shape}")
        self._array: np.ndarray | None = None
        self._array_stage: int | None = None

    def _read_manifest(self) -> dict:
        path = self.root / MANIFEST
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def stage(self) -> int | None:
        """The current (latest committed) stage, ``None`` when nothing is stored yet."""
        return self.manifest.get("stage")

    def stages(self) -> list[int]:
        """Committed stages still on disk."""
        return sorted(int(s) for s in self.manifest.get("stages", {}))

    def _clear(self) -> None:
        """Forget every stored stage; the manifest goes first, so an interruption leaves an empty
        store, never a partial one."""
        stages = self.manifest.get("stages", {})
        (self.root / MANIFEST).unlink(missing_ok=True)
        for files in stages.values():
            for file in files.values():
                (self.root / file).unlink(missing_ok=True)
        self.manifest = {}

    def begin_stage(self, stage: int) -> StageWriter:
        return StageWriter(self, stage)

    def commit_stage(self, stage: int, tmp_path: Path, difficulty: np.ndarray | None) -> None:
        name = f"stage_{stage:02d}.npy"
        files = {"fields": name}
        if difficulty is not None:
            files["difficulty"] = f"stage_{stage:02d}_difficulty.npy"
            np.save(self.root / f".{files['difficulty']}.tmp.npy", difficulty)
            os.replace(self.root / f".{files['difficulty']}.tmp.npy", self.root / files["difficulty"])
        os.replace(tmp_path, self.root / name)
        stages = {int(k): v for k, v in self.manifest.get("stages", {}).items()}
        stages[stage] = files
        dropped = sorted(stages)[:-self.keep] if self.keep > 0 else []
        manifest = {"stage": stage, "num_pairs": self.num_pairs, "shape": list(self.shape), "dtype": "float16",
                    "stages": {str(k): v for k, v in stages.items() if k not in dropped}}
        _atomic_json(self.root / MANIFEST, manifest)
        self.manifest = manifest
        for old in dropped:
            for file in stages[old].values():
                (self.root / file).unlink(missing_ok=True)
        self._array = None

    def use_stage(self, stage: int) -> None:
        """Serve ``stage`` (must be on disk), e.g. the stage a resumed checkpoint recorded."""
        if str(stage) not in self.manifest.get("stages", {}):
            raise RegframeInputError(f"pseudo labels: stage {stage} is not in {self.root} (have {self.stages()})")
        self._array = np.load(self.root / self.manifest["stages"][str(stage)]["fields"], mmap_mode="r")
        self._array_stage = stage

    @property
    def served_stage(self) -> int | None:
        """The stage :meth:`read` returns (the current one unless :meth:`use_stage` chose another)."""
        return self._array_stage if self._array is not None else self.stage

    def read(self, pair_index: Tensor | Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        """Fields ``(B, D, *S)`` float32 for the pairs ``pair_index``."""
        if self._array is None:
            if self.stage is None:
                raise RegframeInputError(f"pseudo labels: nothing stored in {self.root} yet")
            self.use_stage(self.stage)
        index = np.asarray(torch.as_tensor(pair_index).cpu(), dtype=np.int64).reshape(-1)
        return torch.from_numpy(np.ascontiguousarray(self._array[index])).to(device=device, dtype=torch.float32)

    def difficulty(self, stage: int | None = None) -> Tensor | None:
        """Per-pair difficulty stored with ``stage`` (default: the served stage), or ``None``."""
        stage = self.served_stage if stage is None else stage
        files = self.manifest.get("stages", {}).get(str(stage), {})
        if "difficulty" not in files:
            return None
        return torch.from_numpy(np.load(self.root / files["difficulty"]))


@torch.no_grad()
def generate_pseudo_labels(estimator: nn.Module, images: Sequence[Tensor], pairs: Sequence[tuple[int, int]],
                           store: PseudoLabelStore, stage: int, output_shape: Sequence[int], batch: int = 1,
                           device: torch.device | str | None = None) -> Tensor:
    """Write ``estimator``'s field for every pair as ``stage`` of ``store`` and serve that stage.

    Args:
        estimator: run in eval mode (its mode is restored). With a ``refine(fixed, moving,
            output_size) -> (before_adam, after_adam)`` method (the refined CST pipeline) the label is
            ``after_adam``; otherwise it is ``estimator(fixed, moving)`` resized to ``output_shape``.
        images: ``(1, *S)`` image of every subject; ``pairs``: ``(fixed, moving)`` indices into it,
            row ``k`` of the store holds pair ``k``.
        output_shape: the label grid ``S'`` (voxels of the fields are voxels of this grid).
        batch: pairs per forward pass; ``device``: where to run (default: the estimator's).
    Returns:
        ``(len(pairs),)`` difficulty: the mean norm (label-grid voxels) of the change made by
        ``refine``'s instance optimisation; all zero for an estimator without ``refine``.
    """
    if device is None:
        device = next(estimator.parameters(), torch.empty(0)).device
    size = tuple(int(n) for n in output_shape)
    refine = getattr(estimator, "refine", None)
    was_training = estimator.training
    estimator.eval()
    writer = store.begin_stage(stage)
    difficulty = torch.zeros(len(pairs))
    console = get_console()  # Lightning's Rich progress bar uses it too: this bar nests in its display
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    task = progress.add_task(f"pseudo labels, stage {stage}", total=len(pairs))
    try:
        progress.start()
        for start in range(0, len(pairs), batch):
            index = list(range(start, min(start + batch, len(pairs))))
            fixed = torch.stack([images[pairs[i][0]] for i in index]).to(device)
            moving = torch.stack([images[pairs[i][1]] for i in index]).to(device)
            if callable(refine):
                before, after = refine(fixed, moving, size)
            else:
                before = after = resize_field(estimator(fixed, moving).float(), size)
            change = (after - before).norm(dim=1).flatten(1).mean(1)
            writer.write(index, after, change)
            difficulty[index] = change.cpu()
            progress.advance(task, len(index))
        writer.commit()
    finally:
        progress.stop()
        estimator.train(was_training)
    store.use_stage(stage)
    return difficulty
