"""The built-in synthetic abdomen phantom as a data module (the generator is :mod:`regframe.phantom`)."""

from __future__ import annotations

from pathlib import Path

from data_modules.learn2reg import Learn2RegDataModule
from regframe.errors import RegframeInputError
from regframe.phantom import ensure_phantom_dataset


class PhantomDataModule(Learn2RegDataModule):
    """``Learn2RegDataModule`` over the synthetic phantom, written to ``root`` on first use
    (reused when already there with the same parameters). Default intensities: clamp to
    [-200, 300] HU, divided by 500."""

    def __init__(
        self,
        root: str | None = None,
        subjects: int = 8,
        shape: tuple[int, int, int] = (64, 56, 80),
        spacing: float = 6.0,
        seed: int = 0,
        val_subjects: int = 3,
        pair_order: str = "unordered",
        train_subjects: list[str | int] | None = None,
        exclude_val_subjects: bool = True,
        clamp: tuple[float, float] | None = (-200.0, 300.0),
        shift: float = 0.0,
        scale: float = 1.0 / 500.0,
        resample_factor: float = 1.0,
        batch_size: int = 1,
        num_workers: int = 0,
        val_max_pairs: int | None = None,
    ):
        if root is not None and Path(root).exists() and not Path(root).is_dir():
            raise RegframeInputError(f"{root}: not a folder (root)")
        super().__init__(
            dataset_json="", pair_order=pair_order, train_subjects=train_subjects, exclude_val_subjects=exclude_val_subjects,
            clamp=clamp, shift=shift, scale=scale, resample_factor=resample_factor, batch_size=batch_size,
            num_workers=num_workers, val_max_pairs=val_max_pairs, seed=seed)
        self.phantom_args = dict(root=root, subjects=subjects, shape=tuple(shape), spacing=spacing, seed=seed,
                                 val_subjects=val_subjects)
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        self.dataset_json = str(ensure_phantom_dataset(**self.phantom_args))

    def load(self) -> None:
        self.prepare_data()
        super().load()
