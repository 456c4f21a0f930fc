"""Resumable, sharded job lists for benchmark scripts: one JSON line per finished job in an output file,
jobs already there skipped, every n-th job run by shard i (one process per core), or claimed by
the first worker to create their `claimed` file (:func:`claim`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

Job = TypeVar("Job", bound=Hashable)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected i/n, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


def pending_jobs(jobs: Sequence[Job], shard: str, out: Path, key: Callable[[dict[str, Any]], Job]) -> Iterator[Job]:
    """The jobs of ``shard`` (every n-th of ``jobs`` from the i-th) whose ``key(record)`` is not yet in ``out``."""
    index, count = parse_shard(shard)
    done = set()
    if out.exists():
        done = {key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
    for number, job in enumerate(jobs):
        if number % count == index and job not in done:
            yield job


def append_record(out: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to ``out`` as one JSON line (folders created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def claim(folder: Path) -> bool:
    """Create ``folder/claimed`` atomically (folders created): True for the one process that created it,
    False for every other, so that several workers share one job list without running a job twice."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / "claimed", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def quiet_run_options(root_dir: Path) -> list[str]:
    """CLI options for a benchmark's in-process ``RegframeCLI`` run: no logger, progress bar or model
    summary; checkpoints under ``root_dir``."""
    return ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(root_dir)]
