"""Reading regframe checkpoints safely, and the preprocessing record every checkpoint carries.

Checkpoints are read with ``torch.load(weights_only=True)``: an untrusted file cannot run code.
Every regframe module records its data module's :class:`~regframe.preprocess.Preprocessing`
as ``checkpoint["preprocessing"]`` so inference prepares new images exactly as in training.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from regframe.errors import RegframeInputError
from regframe.preprocess import Preprocessing

PREPROCESSING_KEY = "preprocessing"


def read_checkpoint(path: str | Path, what: str = "regframe") -> dict[str, Any]:
    """The checkpoint dict at ``path`` (weights only), with a one-line error naming the file when it is
    missing, unreadable or not a Lightning checkpoint (``state_dict`` and ``hyper_parameters``)."""
    path = Path(path)
    if not path.is_file():
        raise RegframeInputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RegframeInputError(f"{path}: refused: it holds Python objects beyond weights and plain values, which "
                                 "could run code when loaded (torch.load weights_only)") from err
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise RegframeInputError(f"{path}: cannot read checkpoint ({type(err).__name__}: {first_line})") from err
    if not isinstance(state, dict) or "state_dict" not in state or "hyper_parameters" not in state:
        raise RegframeInputError(f"{path}: not a {what} Lightning checkpoint (no state_dict/hyper_parameters)")
    return state


def record_preprocessing(module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
    """Store the ``preprocessing`` of ``module``'s data module (if any) in ``checkpoint``; call it from
    ``on_save_checkpoint``."""
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    preprocessing = getattr(datamodule, "preprocessing", None)
    if preprocessing is not None:
        checkpoint[PREPROCESSING_KEY] = preprocessing.to_dict()


def recorded_preprocessing(path: str | Path, state: dict[str, Any]) -> Preprocessing:
    """The preprocessing recorded in a checkpoint read by :func:`read_checkpoint`."""
    if PREPROCESSING_KEY not in state:
        raise RegframeInputError(f"{path}: no 'preprocessing' record (the training data module had no "
                                 "`preprocessing` attribute)")
    return Preprocessing.from_dict(state[PREPROCESSING_KEY])
