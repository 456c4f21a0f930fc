"""Learn2Reg data sets: any ``{Task}_dataset.json`` (parsed by :mod:`regframe.learn2reg`: training
subjects, ``registration_val`` pairs, label names, masks, keypoints), loaded once into memory and
served as pairs following the regframe batch convention.
"""

from __future__ import annotations

from pathlib import Path

from data_modules.base import CommonOrientation, RegistrationDataModule, enumerate_pairs, require_path
from regframe.errors import RegframeInputError
from regframe.learn2reg import Learn2RegSpec, SubjectEntry, _id_key, load_dataset_json, load_subject
from regframe.preprocess import Preprocessing


class Learn2RegDataModule(RegistrationDataModule):
    """Pairs of a Learn2Reg data set, held in memory.

    Training pairs (``pair_order``) are all ``"unordered"`` (``(i, j)``, ``i < j``) or ``"ordered"`` pairs of the
    training subjects (by default those not used in ``registration_val``; ``train_subjects`` lists
    ids such as ``"0001"`` or ``1`` to choose them). Validation and test both serve ``registration_val``.
    Intensities become ``(clip(x, *clamp) + shift) * scale``; ``resample_factor=0.5`` halves the
    resolution (images linear, labels nearest; spacing doubles). Every subject is brought to the first
    one's axis orientation (flips/permutations; keypoints follow) and must have its voxel spacing.
    """

    def __init__(
        self,
        dataset_json: str,
        pair_order: str = "unordered",
        train_subjects: list[str | int] | None = None,
        exclude_val_subjects: bool = True,
        clamp: tuple[float, float] | None = None,
        shift: float = 0.0,
        scale: float = 1.0,
        resample_factor: float = 1.0,
        label_channel: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        val_max_pairs: int | None = None,
        seed: int = 0,
    ):
        if type(self) is Learn2RegDataModule:  # subclasses (the phantom) write their json in prepare_data
            require_path(dataset_json, "dataset_json")
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_max_pairs=val_max_pairs, seed=seed)
        enumerate_pairs(0, pair_order)  # validates the mode early
        if not resample_factor > 0:
            raise RegframeInputError(f"resample_factor must be > 0, got {resample_factor}")
        self.dataset_json = dataset_json
        self.pair_order = pair_order
        self.train_subject_ids = [str(s) for s in train_subjects] if train_subjects is not None else None
        self.exclude_val_subjects = exclude_val_subjects
        self.preprocessing = Preprocessing(tuple(clamp) if clamp is not None else None, shift, scale, resample_factor)
        self.label_channel = label_channel
        self.spec: Learn2RegSpec | None = None
        self.orientation = CommonOrientation()
        if type(self) is Learn2RegDataModule:  # subclasses record their own signature
            self.save_hyperparameters()

    def _training_entries(self, spec: Learn2RegSpec) -> list[SubjectEntry]:
        if self.train_subject_ids is not None:
            known = {_id_key(e.id): e for e in spec.training}
            missing = [s for s in self.train_subject_ids if _id_key(s) not in known]
            if missing:
                raise RegframeInputError(
                    f"{spec.json_path}: train_subjects {missing} are not in 'training' "
                    f"(ids {[e.id for e in spec.training]})")
            return [known[_id_key(s)] for s in self.train_subject_ids]
        excluded = spec.val_subject_ids if self.exclude_val_subjects else set()
        return [e for e in spec.training if e.id not in excluded]

    def _load_subject(self, entry: SubjectEntry, cache: dict[Path, dict]) -> dict:
        if entry.image not in cache:
            try:
                subject = load_subject(entry, self.spec.label_names, self.label_channel)
            except RegframeInputError as err:
                raise RegframeInputError(f"{err} (listed in {self.spec.json_path})") from err
            subject = self.preprocessing.subject(self.orientation.conform(subject, entry.image))
            cache[entry.image] = subject
        return cache[entry.image]

    def load(self) -> None:
        self.spec = spec = load_dataset_json(self.dataset_json)
        self.label_names = dict(spec.label_names)
        entries = self._training_entries(spec)
        if len(entries) < 2:
            raise RegframeInputError(
                f"{spec.json_path}: only {len(entries)} training subject(s) left after excluding registration_val "
                "subjects; set exclude_val_subjects=False or list train_subjects")
        cache: dict[Path, dict] = {}
        self.train_subjects = [self._load_subject(e, cache) for e in entries]
        self.train_pairs = enumerate_pairs(len(self.train_subjects), self.pair_order)
        val_entries = list({e.image: e for p in spec.registration_val for e in (p.fixed, p.moving)}.values())
        self.val_subjects = [self._load_subject(e, cache) for e in val_entries]
        position = {e.image: i for i, e in enumerate(val_entries)}
        self.val_pairs = [(position[p.fixed.image], position[p.moving.image]) for p in spec.registration_val]
        self.test_subjects, self.test_pairs = self.val_subjects, self.val_pairs
        self._check_grids(spec, entries, self.train_subjects)
        self._check_grids(spec, val_entries, self.val_subjects)

    @staticmethod
    def _check_grids(spec: Learn2RegSpec, entries: list[SubjectEntry], subjects: list[dict]) -> None:
        """Inter-subject pairs need one grid: every subject must have the first one's shape."""
        if not subjects:
            return
        shape = subjects[0]["image"].shape
        for entry, subject in zip(entries, subjects):
            if subject["image"].shape != shape:
                raise RegframeInputError(
                    f"{entry.image}: shape {tuple(subject['image'].shape[1:])} differs from {entries[0].image} "
                    f"shape {tuple(shape[1:])} (listed in {spec.json_path}); pairs need a common grid")
