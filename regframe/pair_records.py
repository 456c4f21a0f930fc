"""Per-pair evaluation records in a plain file in the run's directory, readable without W&B.

Every validation (and test) appends one JSON line per pair to ``val_pairs.jsonl`` (``test_pairs.jsonl``)
in the run's own directory (:func:`regframe.run_config.run_directory`: with W&B
``<save_dir>/<project>/<run id>``, else the logger's version folder): ``step``, ``epoch``, ``pair_id``, the Learn2Reg scalars (``dice``, ``sdlogj``,
``sdlogj_plain``, ``fold_pct``, ``hd95`` when computed) and ``dice_per_organ`` ({organ name: Dice}).
NaN is written as ``null``. ``regframe compare`` reads these files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers.logger import DummyLogger

from regframe.errors import RegframeInputError
from regframe.run_config import run_directory

REQUIRED_KEYS = frozenset({"step", "pair_id", "dice", "dice_per_organ"})


def records_filename(prefix: str) -> str:
    """File name of the records of ``prefix`` (``"val"`` or ``"test"``)."""
    return f"{prefix}_pairs.jsonl"


def append_pair_records(trainer: pl.Trainer, prefix: str, records: Sequence[Mapping[str, Any]]) -> Path | None:
    """Append ``records`` (one dict per pair) stamped with the trainer's step and epoch; returns the
    file, or None when nothing is written: no records, no logger (``logger: false``), Lightning's
    ``fast_dev_run`` (its dummy logger has no run directory), or a process other than rank 0
    (with several processes, rank 0 records only its own share of the pairs)."""
    if not records or not trainer.is_global_zero or not trainer.loggers:
        return None
    if any(isinstance(logger, DummyLogger) for logger in trainer.loggers):
        return None
    run_dir = run_directory(trainer)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / records_filename(prefix)
    lines = [json.dumps(_json_safe({"step": trainer.global_step, "epoch": trainer.current_epoch, **record}))
             for record in records]
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def read_pair_records(path: Path) -> list[dict[str, Any]]:
    """The records of one file, ``null`` read back as NaN; a line that is not a record (``step``,
    ``pair_id``, ``dice``, ``dice_per_organ``) raises :class:`RegframeInputError` naming it."""
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RegframeInputError(f"{path}:{number}: not a JSON line ({err.msg})") from None
            if not isinstance(record, dict) or not REQUIRED_KEYS <= record.keys():
                raise RegframeInputError(f"{path}:{number}: a pair record needs the keys {sorted(REQUIRED_KEYS)}")
            records.append(_nan_for_none(record))
    return records


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def _nan_for_none(value: Any) -> Any:
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return {k: _nan_for_none(v) for k, v in value.items()}
    return value
