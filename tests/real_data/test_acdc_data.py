"""The ACDC data module on the real ../shared/data/ACDC/training (100 patients): every short-axis
slice becomes one ED -> ES pair (951, the paper's 751 + 200), split 80/20 patients by the seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_modules.acdc import ACDCDataModule


@pytest.mark.real_data
def test_real_acdc_slice_pair_counts(shared_data: Path):
    module = ACDCDataModule(str(shared_data / "ACDC"))
    module.setup("fit")
    assert len(module.train_pairs) + len(module.val_pairs) == 951  # every short-axis slice of the 100 patients
    assert (len(module.train_pairs), len(module.val_pairs)) == (774, 177)  # seed 0 (the paper: 751 / 200)
    assert len(module.hparams["val_patient_ids"]) == 20
