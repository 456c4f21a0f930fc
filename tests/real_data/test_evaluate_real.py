"""Pre-registration scores of the real AbdomenCTCT label maps (15 validation pairs, 192x160x256)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from regframe.evaluate import evaluate_dataset, format_table

pytestmark = pytest.mark.real_data  # full-size volumes: about 40 s on 2 cores

SHARED_DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
DATASET = SHARED_DATA / "AbdomenCTCT_synth" / "AbdomenCTCT_dataset.json"


@pytest.fixture(scope="module")
def dataset_json() -> Path:
    if not DATASET.is_file():
        pytest.skip(f"real data not found at {DATASET} (set REGFRAME_SHARED_DATA)")
    return DATASET


def numpy_pre_registration_dice(dataset_json: Path) -> dict[str, float]:
    """Independent reference: mean Dice of unwarped labels over labels in both maps, per pair."""
    spec = json.loads(dataset_json.read_text())
    cache: dict[str, np.ndarray] = {}

    def labels(image: str) -> np.ndarray:
        if image not in cache:
            cache[image] = np.asarray(nib.load(dataset_json.parent / image.replace("imagesTr", "labelsTr")).dataobj)
        return cache[image]

    result = {}
    for pair in spec["registration_val"]:
        fixed, moving = labels(pair["fixed"]), labels(pair["moving"])
        common = np.intersect1d(np.unique(fixed), np.unique(moving))
        scores = [2.0 * np.count_nonzero((fixed == k) & (moving == k))
                  / (np.count_nonzero(fixed == k) + np.count_nonzero(moving == k)) for k in common if k > 0]
        name = f"{Path(pair['fixed']).name[-16:-12]}_{Path(pair['moving']).name[-16:-12]}"
        result[name] = float(np.mean(scores))
    return result


def test_pre_registration_dice_matches_numpy(dataset_json, tmp_path):
    empty = tmp_path / "no_fields"
    empty.mkdir()
    result = evaluate_dataset(dataset_json, empty, out=tmp_path / "metrics.json", allow_missing=True, hd95=False)
    print("\n" + format_table(result))
    reference = numpy_pre_registration_dice(dataset_json)
    assert len(result["cases"]) == 15 and all(case["missing"] for case in result["cases"])
    assert {case["pair"] for case in result["cases"]} == set(reference)
    for case in result["cases"]:
        assert case["dice"] == pytest.approx(reference[case["pair"]], abs=1e-4)
        assert case["fold_pct"] == 0.0 and case["sdlogj"] == 0.0
    assert len(result["labels"]) == 13 and "liver" in result["cases"][0]["dice_per_label"]
    assert result["aggregate"]["dice"]["mean"] == pytest.approx(np.mean(list(reference.values())), abs=1e-4)
