"""ACDC ED -> ES registration pairs of the same patient (the AdaCS paper's protocol), read from the
original layout by :mod:`regframe.acdc`: ``root/training`` (split by patient into training and
validation, seeded) and ``root/testing`` (patients 101-150, only for ``test``).

``protocol: slices`` (the paper): one 2D pair per short-axis slice, ``crop_size`` x ``crop_size``
around the ED slice's myocardium centroid; fixed = ES slice, moving = ED slice; ``spacing`` is the
in-plane voxel size (mm). ``protocol: volumes``: one 3D pair per patient, cropped in-plane the
same way and padded/cropped to ``depth`` slices. Labels keep all ACDC classes (1 RV cavity,
2 myocardium, 3 LV cavity); the method's ``metric_labels`` chooses the scored ones.
``preprocessing`` (what checkpoints record for ``regframe register``) stays the identity: the
intensity normalisation depends on each frame (:func:`regframe.acdc.normalise_intensity`), so images
given to ``regframe register --checkpoint`` must be normalised that way first.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from data_modules.base import RegistrationDataModule, require_path
from data_modules.paired import split_cases
from regframe.acdc import LABEL_NAMES, Patient, as_subject, patient_folders, read_patient, slice_pairs, volume_pair
from regframe.errors import RegframeInputError

PROTOCOLS = ("slices", "volumes")


class ACDCDataModule(RegistrationDataModule):
    """ED (moving) -> ES (fixed) pairs of ACDC patients.

    Args:
        root: folder holding ``training/`` and optionally ``testing/`` (original ACDC layout).
        protocol: ``"slices"`` (2D slice pairs) or ``"volumes"`` (3D stacks).
        crop_size: in-plane size of every pair (voxels); smaller images are zero-padded.
        depth: slices per stack with ``protocol: volumes``.
        val_patients: patients of ``training/`` held out for validation (seeded by ``seed``); their
            ids are recorded in the hyperparameters (``val_patient_ids``) and logged.
        tune_patients: for choosing settings without the validation patients: this many of the
            remaining training patients (seeded) are held out and validated on instead, and the
            ``val_patients`` are not used at all (ids in ``tune_patient_ids``). 0: off.
        batch_size, num_workers, val_max_pairs, seed: as in :class:`RegistrationDataModule`.
    """

    def __init__(self, root: str = "../shared/data/ACDC", protocol: str = "slices", crop_size: int = 128,
                 depth: int = 16, val_patients: int = 20, tune_patients: int = 0, batch_size: int = 8,
                 num_workers: int = 0, val_max_pairs: int | None = None, seed: int = 0) -> None:
        require_path(Path(root) / "training", "root: the ACDC folder holding training/ and optionally testing/",
                     folder=True)
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_max_pairs=val_max_pairs, seed=seed)
        if protocol not in PROTOCOLS:
            raise RegframeInputError(f"protocol: unknown protocol {protocol!r}, expected one of {PROTOCOLS}")
        if crop_size < 8 or depth < 1 or val_patients < 0 or tune_patients < 0:
            raise RegframeInputError(f"crop_size must be >= 8, depth >= 1, val_patients and tune_patients >= 0, "
                                     f"got {crop_size}, {depth}, {val_patients}, {tune_patients}")
        self.root = Path(root)
        self.protocol = protocol
        self.crop_size = crop_size
        self.depth = depth
        self.val_patients = val_patients
        self.tune_patients = tune_patients
        self.label_names = dict(LABEL_NAMES)
        self.save_hyperparameters()
        self._test_loaded = False

    def load(self) -> None:
        folders = {p.name: p for p in patient_folders(self.root / "training")}
        if self.val_patients + self.tune_patients >= len(folders):
            raise RegframeInputError(f"val_patients, tune_patients: {self.val_patients} + {self.tune_patients} "
                                     f"requested but {self.root / 'training'} holds only {len(folders)} patients")
        split = split_cases(sorted(folders), (len(folders) - self.val_patients, self.val_patients, 0), self.seed)
        self.hparams["val_patient_ids"] = split["val"]
        train, validation, name = split["train"], split["val"], "validation"
        if self.tune_patients:
            tuning = split_cases(train, (len(train) - self.tune_patients, self.tune_patients, 0), self.seed)
            train, validation, name = tuning["train"], tuning["val"], "tuning (validation patients unused)"
            self.hparams["tune_patient_ids"] = validation
        self.train_subjects, self.train_pairs = self._pairs([folders[p] for p in train])
        self.val_subjects, self.val_pairs = self._pairs([folders[p] for p in validation])
        rank_zero_info(f"ACDC {self.protocol}: {len(self.train_pairs)} training pairs ({len(train)} patients), "
                       f"{len(self.val_pairs)} {name} pairs ({len(validation)} patients, seed {self.seed}: "
                       f"{', '.join(validation)})")

    def setup(self, stage: str | None = None) -> None:
        """Training/validation patients for every stage but ``test``; ``testing/`` for ``test``."""
        if stage == "test":
            self._load_test()
        else:
            super().setup(stage)

    def _load_test(self) -> None:
        if self._test_loaded:
            return
        testing = self.root / "testing"
        if not testing.is_dir():
            raise RegframeInputError(f"{testing}: folder not found; lightning test evaluates the ACDC test patients "
                                     "(101-150) in root/testing in the original layout")
        folders = patient_folders(testing)
        self.test_subjects, self.test_pairs = self._pairs(folders)
        self._test_loaded = True
        rank_zero_info(f"ACDC {self.protocol}: {len(self.test_pairs)} test pairs ({len(folders)} patients in {testing})")

    def test_dataloader(self) -> DataLoader:
        self._load_test()
        return super().test_dataloader()

    def _pairs(self, folders: list[Path]) -> tuple[list[dict], list[tuple[int, int]]]:
        """Subjects ``[fixed (ES), moving (ED), ...]`` and pairs ``(2i, 2i + 1)``."""
        subjects = []
        for folder in folders:
            patient = read_patient(folder)
            subjects += self._subjects(patient)
        return subjects, [(2 * i, 2 * i + 1) for i in range(len(subjects) // 2)]

    def _subjects(self, patient: Patient) -> list[dict]:
        if self.protocol == "volumes":
            pair = volume_pair(patient, self.crop_size, self.depth)
            return [as_subject(f"{patient.id}_{frame}", pair[f"{frame}_image"], pair[f"{frame}_label"],
                               patient.spacing) for frame in ("es", "ed")]
        subjects = []
        for pair in slice_pairs(patient, self.crop_size):
            subjects += [as_subject(f"{patient.id}_s{pair['index']:02d}_{frame}", pair[f"{frame}_image"],
                                    pair[f"{frame}_label"], patient.spacing[:2]) for frame in ("es", "ed")]
        return subjects
