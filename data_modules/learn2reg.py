"""Learn2Reg data sets: any ``{Task}_dataset.json`` (parsed by :mod:`regframe.learn2reg`: training
subjects, ``registration_val`` pairs, label names, masks, keypoints), loaded once into memory and
served as pairs following the regframe batch convention.
"""

from __future__ import annotations

from pathlib import Path

import torch

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
    ``contiguous_labels=True`` renumbers the json's label codes in increasing order to 1..K (LPBA40's
    codes 21..182 become 1..56), as a segmentation network with K + 1 classes needs;
    ``label_codes[k - 1]`` is the original code of class ``k``.

    Test pairs are ``registration_val`` unless ``test_subjects`` lists training subjects to hold out:
    they are then left out of training, and the first ``test_fixed`` of them are fixed images, each
    paired with every other listed subject as moving (the JRSS paper's protocol; ``test_fixed=None``:
    all ordered pairs of the listed subjects).
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
        contiguous_labels: bool = False,
        test_subjects: list[str | int] | None = None,
        test_fixed: int | None = 2,
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
        self.test_subject_ids = [str(s) for s in test_subjects] if test_subjects is not None else None
        if self.test_subject_ids is not None:
            if len(self.test_subject_ids) < 2:
                raise RegframeInputError(f"test_subjects needs at least 2 subjects, got {self.test_subject_ids}")
            if test_fixed is not None and not 1 <= test_fixed < len(self.test_subject_ids):
                raise RegframeInputError(
                    f"test_fixed must lie in [1, {len(self.test_subject_ids) - 1}] for "
                    f"{len(self.test_subject_ids)} test_subjects, got {test_fixed}")
        self.test_fixed = test_fixed
        self.exclude_val_subjects = exclude_val_subjects
        self.preprocessing = Preprocessing(tuple(clamp) if clamp is not None else None, shift, scale, resample_factor)
        self.label_channel = label_channel
        self.contiguous_labels = contiguous_labels
        self.label_codes: list[int] | None = None
        self._code_lookup: torch.Tensor | None = None
        self.spec: Learn2RegSpec | None = None
        self.orientation = CommonOrientation()
        if type(self) is Learn2RegDataModule:  # subclasses record their own signature
            self.save_hyperparameters()

    def _lookup(self, spec: Learn2RegSpec, ids: list[str], option: str) -> list[SubjectEntry]:
        known = {_id_key(e.id): e for e in spec.training}
        missing = [s for s in ids if _id_key(s) not in known]
        if missing:
            raise RegframeInputError(
                f"{spec.json_path}: {option} {missing} are not in 'training' (ids {[e.id for e in spec.training]})")
        return [known[_id_key(s)] for s in ids]

    def _training_entries(self, spec: Learn2RegSpec) -> list[SubjectEntry]:
        held_out = {_id_key(s) for s in self.test_subject_ids or []}
        if self.train_subject_ids is not None:
            overlap = [s for s in self.train_subject_ids if _id_key(s) in held_out]
            if overlap:
                raise RegframeInputError(f"{spec.json_path}: subjects {overlap} are in both train_subjects and "
                                         "test_subjects")
            return self._lookup(spec, self.train_subject_ids, "train_subjects")
        excluded = spec.val_subject_ids if self.exclude_val_subjects else set()
        return [e for e in spec.training if e.id not in excluded and _id_key(e.id) not in held_out]

    def _load_subject(self, entry: SubjectEntry, cache: dict[Path, dict]) -> dict:
        if entry.image not in cache:
            try:
                subject = load_subject(entry, self.spec.label_names, self.label_channel)
            except RegframeInputError as err:
                raise RegframeInputError(f"{err} (listed in {self.spec.json_path})") from err
            if self._code_lookup is not None and subject["label"] is not None:
                subject["label"] = self._code_lookup[subject["label"].long()]
            subject = self.preprocessing.subject(self.orientation.conform(subject, entry.image))
            cache[entry.image] = subject
        return cache[entry.image]

    def load(self) -> None:
        self.spec = spec = load_dataset_json(self.dataset_json)
        self.label_names = dict(spec.label_names)
        if self.contiguous_labels:
            self._renumber_labels(spec)
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
        if self.test_subject_ids is not None:
            test_entries = self._lookup(spec, self.test_subject_ids, "test_subjects")
            self.test_subjects = [self._load_subject(e, cache) for e in test_entries]
            self.test_pairs = held_out_pairs(len(test_entries), self.test_fixed)
            self._check_grids(spec, test_entries, self.test_subjects)

    def _renumber_labels(self, spec: Learn2RegSpec) -> None:
        """Class ``k`` (1..K) stands for the k-th smallest code of the json's ``labels``."""
        if not spec.label_names:
            raise RegframeInputError(f"{spec.json_path}: contiguous_labels needs the json's 'labels' to list the codes")
        self.label_codes = sorted(spec.label_names)
        if self.label_codes[0] < 0:
            raise RegframeInputError(f"{spec.json_path}: label codes must be >= 0 for contiguous_labels, "
                                     f"got {self.label_codes[0]}")
        self._code_lookup = torch.zeros(self.label_codes[-1] + 1, dtype=torch.uint8 if len(self.label_codes) < 256
                                        else torch.int16)
        for k, code in enumerate(self.label_codes, start=1):
            self._code_lookup[code] = k
        self.label_names = {k: spec.label_names[code] for k, code in enumerate(self.label_codes, start=1)}

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


def held_out_pairs(count: int, fixed: int | None) -> list[tuple[int, int]]:
    """``(fixed, moving)`` index pairs of ``count`` test subjects: each of the first ``fixed`` subjects
    with every other subject as moving; all ordered pairs when ``fixed`` is None."""
    fixed_indices = range(count) if fixed is None else range(fixed)
    return [(f, m) for f in fixed_indices for m in range(count) if m != f and (fixed is None or m >= fixed)]
