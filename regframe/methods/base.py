"""``RegistrationModule``: the LightningModule every method derives from.

It owns one ``DisplacementEstimator`` and does everything that is the same for all methods:
validation / test (warp the moving labels, Learn2Reg metrics per pair and per organ, logging, the
per-pair records of :mod:`regframe.pair_records`), prediction (displacements), building the
optimiser from config callables and stopping on a non-finite training loss (:class:`NonFiniteLossError`).
Subclasses only
implement ``training_step`` (and override ``predict_displacement`` for test-time refinement).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from regframe.checkpoint import record_preprocessing
from regframe.estimators.base import DisplacementEstimator
from regframe.pair_records import append_pair_records
from regframe.spatial import warp_labels


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite (the message names the method, the step and the value)."""


class RegistrationModule(pl.LightningModule):
    """Base LightningModule: validation/test metrics, prediction and optimiser set-up.

    Args:
        estimator: the network (or algorithm) being trained; ``u = estimator(fixed, moving)``.
        optimizer: optimiser factory over the estimator's parameters (YAML ``class_path``).
        lr_scheduler: optional scheduler factory; it is stepped every optimiser step.
        label_warp: ``"nearest"`` or ``"onehot"`` (linear on one-hot, then arg-max) for evaluation.
        compute_hd95: HD95 is the slowest metric (CPU distance transforms); switch it off for speed.
        metric_labels: the labels scored (Dice, distances), e.g. ``[2]`` for the ACDC myocardium;
            default every foreground label present in both maps.
        surface_distances: also log the Hausdorff and average surface distances ``hd``, ``asd``
            (voxels) and ``hd_mm``, ``asd_mm`` (MONAI, see :func:`regframe.metrics.surface_distances_per_label`).
    """

    def __init__(
        self,
        estimator: DisplacementEstimator,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_warp: str = "nearest",
        compute_hd95: bool = True,
        metric_labels: Sequence[int] | None = None,
        surface_distances: bool = False,
    ) -> None:
        super().__init__()
        save_config_hyperparameters(self)
        self.estimator = estimator
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_warp = label_warp
        self.compute_hd95 = compute_hd95
        self.metric_labels = [int(label) for label in metric_labels] if metric_labels is not None else None
        self.surface_distances = surface_distances
        self.pair_records: list[dict[str, Any]] = []  # this evaluation's pairs (regframe.pair_records)

    # ----------------------------------------------------------------- inference
    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return self.estimator(fixed, moving)

    def predict_displacement(self, batch: Mapping[str, Any]) -> Tensor:
        """Displacement ``(B, D, *S)`` in voxels used for evaluation and prediction.

        Override to add test-time refinement (second warp, instance optimisation, ...).
        """
        return self.estimator(batch["fixed"], batch["moving"])

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"pair_id": batch.get("pair_id"), "disp": self.predict_displacement(batch)}

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, float]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, float]:
        return self._evaluate(batch, "test")

    def label_names(self) -> dict[int, str]:
        """Organ names from the datamodule (``label_names``), when it has them."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return dict(getattr(datamodule, "label_names", None) or {})

    def _evaluate(self, batch: Mapping[str, Any], prefix: str) -> dict[str, float]:
        from regframe.metrics import pair_metrics

        disp = self.predict_displacement(batch).float()
        if "fixed_label" not in batch or "moving_label" not in batch:
            return {}
        warped = warp_labels(batch["moving_label"], disp, method=self.label_warp)
        names = self.label_names()
        batch_size = disp.shape[0]
        results: list[dict[str, float]] = []
        for i in range(batch_size):
            spacing = batch["spacing"][i].tolist() if "spacing" in batch else [1.0] * (disp.dim() - 2)
            m = pair_metrics(batch["fixed_label"][i : i + 1], batch["moving_label"][i : i + 1], disp[i : i + 1],
                             spacing, labels=self.metric_labels, warped_label=warped[i : i + 1],
                             hd95=self.compute_hd95, surface_distances=self.surface_distances)
            scores = {"dice": m["dice"], "sdlogj": m["sdlogj_l2r"], "sdlogj_plain": m["sdlogj"],
                      "fold_pct": m["fold_pct"], "std_jac": m["std_jac"]}
            if self.compute_hd95:
                scores["hd95"] = m["hd95"]
            if self.surface_distances:
                scores.update({key: m[key] for key in ("hd", "asd", "hd_mm", "asd_mm")})
            organs = {names.get(int(label), f"label{int(label)}"): value
                      for label, value in m["dice_per_label"].items()}
            pair_id = batch["pair_id"][i] if "pair_id" in batch else str(len(self.pair_records))
            self.pair_records.append({"pair_id": pair_id, **scores, "dice_per_organ": organs})
            results.append({**{f"{prefix}/{key}": value for key, value in scores.items()},
                            **{f"{prefix}/dice_{_organ_key(organ)}": value for organ, value in organs.items()}})
        for flat in results:
            finite = {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}
            self.log_dict(finite, on_epoch=True, on_step=False, batch_size=1, sync_dist=True)
        return results[0] if results else {}

    def on_validation_epoch_start(self) -> None:
        self.pair_records = []

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            append_pair_records(self.trainer, "val", self.pair_records)

    def on_test_epoch_start(self) -> None:
        self.pair_records = []

    def on_test_epoch_end(self) -> None:
        append_pair_records(self.trainer, "test", self.pair_records)

    # ----------------------------------------------------------------- training
    def on_before_backward(self, loss: Tensor) -> None:
        stop_on_nonfinite_loss(self, loss)

    # ----------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the data module's ``preprocessing`` (``checkpoint["preprocessing"]``, a plain
        dict) so ``regframe register --checkpoint`` prepares images as in training. Subclasses
        that override this hook call ``super().on_save_checkpoint(checkpoint)``."""
        record_preprocessing(self, checkpoint)

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        return optimizer_and_scheduler(self.optimizer_factory, self.lr_scheduler_factory,
                                       self.estimator.parameters(), interval="step")


def optimizer_and_scheduler(optimizer_factory: OptimizerCallable, lr_scheduler_factory: LRSchedulerCallable | None,
                            parameters: Any, interval: str) -> Any:
    """``configure_optimizers``' answer for one optimiser over ``parameters`` and an optional scheduler
    that Lightning steps every ``interval`` (``"step"`` or ``"epoch"``)."""
    optimizer = optimizer_factory(parameters)
    if lr_scheduler_factory is None:
        return optimizer
    scheduler = lr_scheduler_factory(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def stop_on_nonfinite_loss(module: pl.LightningModule, loss: Tensor) -> None:
    """Stop training on a non-finite loss, before its gradients reach the weights (call it from
    ``on_before_backward``; automatic or manual optimisation): the last checkpoint keeps the last
    finite weights."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"{type(module).__name__}: training loss is {loss.detach().float().mean().item()} at global step "
            f"{module.global_step} (epoch {module.current_epoch}); training stopped before this step's update")


def save_config_hyperparameters(module: pl.LightningModule) -> None:
    """Save the ``__init__`` arguments of ``module`` (and of its subclasses) as hyperparameters,
    keeping only plain values.

    Under the CLI the nested estimator / optimiser arrive as their YAML (``class_path`` dicts), so
    ``load_from_checkpoint`` and ``regframe register --checkpoint`` rebuild the exact model. A
    module built in Python passes live objects; those are dropped rather than pickled, so every
    checkpoint loads with ``torch.load(weights_only=True)``.
    """
    module.save_hyperparameters(logger=False, frame=inspect.currentframe().f_back)
    module.remove_ignored_hparams([key for key, value in module.hparams.items() if not _is_plain(value)])


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _organ_key(name: str) -> str:
    """Metric-key form of an organ name: lower case, spaces to underscores."""
    return name.strip().lower().replace(" ", "_")
