"""Paired fixed/moving folders (the layout of ``shared/data/prostate_mr_us``):

    root/fixed_images/{case}.nii.gz   root/fixed_labels/{case}.nii.gz    (e.g. TRUS)
    root/moving_images/{case}.nii.gz  root/moving_labels/{case}.nii.gz   (e.g. MR)

(any format :mod:`regframe.io` reads: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``).

Labels may be 4-D channel-last binary maps; ``label_channel`` picks one (0 = prostate gland), which
becomes label 1. Pairs are either the two images of one case (``"fixed-moving"``: moving -> fixed)
or two cases of one side (``"fixed-fixed"``, ``"moving-moving"``: inter-patient). Cases are split
train/val/test by a seeded permutation; every image is brought to one ``target_shape`` (centred
pad/crop keeping the spacing, or resampling over the whole field of view) so pairs share a grid.
Every image is first brought to the axis orientation of the first one read (flips/permutations);
with ``pad_crop`` all must also share its voxel spacing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from data_modules.base import (
    CommonOrientation,
    RegistrationDataModule,
    enumerate_pairs,
    require_path,
)
from regframe.errors import RegframeInputError
from regframe.io import FORMATS, check_same_grid, image_stem, read_image, read_label
from regframe.learn2reg import label_ids
from regframe.preprocess import Preprocessing, pad_crop_subject, resize_subject

PAIR_KINDS = ("fixed-moving", "fixed-fixed", "moving-moving")
RESIZE_MODES = ("pad_crop", "resample")


def _cases(folder: Path) -> dict[str, Path]:
    """Case name -> file for every image file (NIfTI, NRRD, MetaImage) in ``folder``."""
    if not folder.is_dir():
        raise RegframeInputError(f"{folder}: folder not found")
    files = {image_stem(p): p for p in sorted(folder.iterdir()) if image_stem(p) is not None}
    if not files:
        raise RegframeInputError(f"{folder}: no image files ({', '.join(FORMATS)})")
    return files


def split_cases(cases: Sequence[str], split: Sequence[float], seed: int,
                patients: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Seeded split of ``cases`` into ``{"train", "val", "test"}``. ``split`` is three counts (ints)
    or three fractions (floats; train takes the remainder when they sum to 1).

    ``patients`` (case -> patient key): cases of one patient stay in one part. Patients are drawn in
    seeded order and fill val, then test, then train, each until its count is reached; any part can
    exceed its count by the other cases of its last patient (train's count is first lowered by the
    surplus of val and test)."""
    if len(split) != 3 or min(split) < 0:
        raise RegframeInputError(f"split: expected three non-negative numbers (train, val, test), got {split!r}")
    total = len(cases)
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in split):
        counts = [int(s) for s in split]
    else:
        if sum(split) > 1.0 + 1e-6:
            raise RegframeInputError(f"split: fractions {split!r} sum to more than 1")
        val, test = (int(round(s * total)) for s in split[1:])
        train = total - val - test if abs(sum(split) - 1.0) < 1e-6 else int(round(split[0] * total))
        counts = [train, val, test]
    if sum(counts) > total:
        raise RegframeInputError(f"split: {counts} cases requested but only {total} available")
    rng = np.random.default_rng(seed)
    if patients is None:
        order = [cases[i] for i in rng.permutation(total)]
        bounds = np.cumsum([0, *counts])
        return {name: sorted(order[bounds[i]:bounds[i + 1]]) for i, name in enumerate(("train", "val", "test"))}
    groups: dict[str, list[str]] = {}
    for case in cases:
        groups.setdefault(patients[case], []).append(case)
    keys = sorted(groups)
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    quota = {"val": counts[1], "test": counts[2], "train": counts[0]}
    for key in (keys[i] for i in rng.permutation(len(keys))):
        part = next((name for name in ("val", "test", "train") if len(parts[name]) < quota[name]), None)
        if part is None:
            break
        parts[part] += groups[key]
        if part != "train":
            quota["train"] = max(counts[0] - (len(parts["val"]) - counts[1]) - (len(parts["test"]) - counts[2]), 0)
    return {name: sorted(parts[name]) for name in ("train", "val", "test")}


def label_patients(labels: Mapping[str, Path], channel: int | None) -> dict[str, str]:
    """Case -> patient key: cases whose label maps (``channel``) are identical are taken to be one
    patient (in ``prostate_mr_us`` 80 cases hold 56 distinct MR gland labels; the cases of one
    patient share a near-identical MR)."""
    return {case: hashlib.sha1(np.ascontiguousarray(read_label(path, channel).array).tobytes()).hexdigest()
            for case, path in labels.items()}


class PairedDataModule(RegistrationDataModule):
    """Pairs from fixed/moving folders with a seeded case split and a common grid.

    ``pair_kind``: ``"fixed-moving"`` (moving and fixed image of the same case), ``"fixed-fixed"`` or
    ``"moving-moving"`` (inter-patient; ``pair_order`` ``"unordered"``/``"ordered"``, validation and
    test use all unordered pairs of their cases). ``target_shape`` defaults to the fixed image shape
    (``"fixed-moving"``) or the common native shape (inter-patient). Intensities become
    ``(clip(x, *clamp) + shift) * scale`` (default uint8 -> [0, 1]). ``train_subjects`` holds every
    training image (with its label), e.g. for segmentation-style training. ``group_patients``: cases
    whose moving-side labels are identical are one patient and stay in one split part (in
    ``prostate_mr_us`` a third of the cases repeat another case's MR; a plain case split put the same
    patient's MR in training and test for 30–50 % of the test cases), and inter-patient pair kinds
    leave out the pairs of two cases of one patient.
    """

    def __init__(
        self,
        root: str,
        pair_kind: str = "fixed-moving",
        split: tuple[int, int, int] | tuple[float, float, float] = (0.8, 0.1, 0.1),
        pair_order: str = "unordered",
        target_shape: tuple[int, ...] | None = None,
        resize: str = "pad_crop",
        clamp: tuple[float, float] | None = None,
        shift: float = 0.0,
        scale: float = 1.0 / 255.0,
        label_channel: int | None = 0,
        label_name: str = "gland",
        resample_factor: float = 1.0,
        batch_size: int = 1,
        num_workers: int = 0,
        val_max_pairs: int | None = None,
        seed: int = 0,
        group_patients: bool = True,
    ):
        require_path(root, "root: the folder holding fixed_images/ and moving_images/", folder=True)
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_max_pairs=val_max_pairs, seed=seed)
        if pair_kind not in PAIR_KINDS:
            raise RegframeInputError(f"pair_kind: unknown kind {pair_kind!r}, expected one of {PAIR_KINDS}")
        if resize not in RESIZE_MODES:
            raise RegframeInputError(f"resize: unknown mode {resize!r}, expected one of {RESIZE_MODES}")
        if not resample_factor > 0:
            raise RegframeInputError(f"resample_factor must be > 0, got {resample_factor}")
        enumerate_pairs(0, pair_order)  # validates the mode early
        self.root = Path(root)
        self.pair_kind = pair_kind
        self.split = tuple(split)
        self.pair_order = pair_order
        self.target_shape = tuple(int(s) for s in target_shape) if target_shape is not None else None
        self.resize = resize
        self.preprocessing = Preprocessing(tuple(clamp) if clamp is not None else None, shift, scale, resample_factor)
        self.label_channel = label_channel
        self.label_name = label_name
        self.group_patients = group_patients
        self.splits: dict[str, list[str]] = {}
        self.save_hyperparameters()

    def _sides(self) -> tuple[str, ...]:
        return ("fixed", "moving") if self.pair_kind == "fixed-moving" else (self.pair_kind.split("-")[0],)

    def _read(self, case: str, side: str, images: dict[str, Path], labels: dict[str, Path] | None) -> dict:
        image = read_image(images[case])
        subject = {
            "id": case,
            "image": torch.from_numpy(image.array.copy())[None],
            "label": None,
            "spacing": torch.tensor(image.spacing, dtype=torch.float32),
            "affine": image.affine,
            "side": side,
        }
        if labels is not None:
            if case not in labels:
                raise RegframeInputError(f"{self.root / f'{side}_labels'}: no label file for case {case!r}")
            label = read_label(labels[case], channel=self.label_channel)
            check_same_grid(image, label)
            if not set(label_ids(label.array)) <= {0, 1}:
                raise RegframeInputError(f"{labels[case]}: expected a binary label (0/1), set label_channel")
            subject["label"] = torch.from_numpy(np.ascontiguousarray(label.array))[None]
        return subject

    def _to_grid(self, subject: dict, shape: tuple[int, ...]) -> dict:
        if self.resize == "pad_crop":
            subject = pad_crop_subject(subject, shape)
        else:
            subject = resize_subject(subject, shape)
        subject = self.preprocessing.subject(subject)
        return subject

    def load(self) -> None:
        sides = self._sides()
        images = {side: _cases(self.root / f"{side}_images") for side in sides}
        labels = {side: _cases(self.root / f"{side}_labels") if (self.root / f"{side}_labels").is_dir() else None
                  for side in sides}
        cases = sorted(images[sides[0]])
        if len(sides) == 2 and set(images["fixed"]) != set(images["moving"]):
            only = sorted(set(images["fixed"]) ^ set(images["moving"]))
            raise RegframeInputError(f"{self.root}: cases {only[:5]} are not in both fixed_images and moving_images")
        patients = None
        key_folder = next((self.root / f"{side}_labels" for side in ("moving", *sides)
                           if (self.root / f"{side}_labels").is_dir()), None)
        if self.group_patients and key_folder is not None:  # the moving (MR) labels identify patients
            key_labels = _cases(key_folder)
            missing = sorted(set(cases) - set(key_labels))
            if missing:
                raise RegframeInputError(f"{key_folder}: no label file for cases {missing[:5]} (group_patients needs one per case)")
            patients = label_patients({case: key_labels[case] for case in cases}, self.label_channel)
        self.splits = split_cases(cases, self.split, self.seed, patients)
        used = sorted(c for part in self.splits.values() for c in part)  # cases outside the split are never read
        orientation = CommonOrientation(check_spacing=self.resize == "pad_crop")
        raw = {(case, side): orientation.conform(self._read(case, side, images[side], labels[side]), images[side][case])
               for case in used for side in sides}
        shape = self.target_shape or self._default_shape(raw)
        subjects = {key: self._to_grid(subject, shape) for key, subject in raw.items()}
        self.label_names = {1: self.label_name} if all(labels.values()) else {}

        def build(part: str, order: str) -> tuple[list[dict], list[tuple[int, int]]]:
            if len(sides) == 2:
                chosen = [subjects[(case, side)] for case in self.splits[part] for side in sides]
                return chosen, [(2 * i, 2 * i + 1) for i in range(len(self.splits[part]))]
            cases = self.splits[part]
            chosen = [subjects[(case, sides[0])] for case in cases]
            pairs = enumerate_pairs(len(chosen), order)
            if patients is not None:   # two cases of one patient are no inter-patient pair
                pairs = [(i, j) for i, j in pairs if patients[cases[i]] != patients[cases[j]]]
            return chosen, pairs

        self.train_subjects, self.train_pairs = build("train", self.pair_order)
        self.val_subjects, self.val_pairs = build("val", "unordered")
        self.test_subjects, self.test_pairs = build("test", "unordered")

    def _default_shape(self, raw: dict[tuple[str, str], dict]) -> tuple[int, ...]:
        """Fixed image shape (same-case pairs) or the single native shape of the chosen side."""
        side = "fixed" if self.pair_kind == "fixed-moving" else self._sides()[0]
        shapes = {tuple(s["image"].shape[1:]) for (_, sd), s in raw.items() if sd == side}
        if len(shapes) > 1:
            raise RegframeInputError(
                f"{self.root / f'{side}_images'}: images have different shapes {sorted(shapes)[:3]}; set target_shape")
        return shapes.pop()
