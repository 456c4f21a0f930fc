"""Pre-registration scores of the real AbdomenCTCT label maps (15 validation pairs, 192x160x256)."""

from __future__ import annotations

import json
import os
import shutil
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


def test_lung_ct_tre_at_zero_field_is_the_initial_keypoint_distance(shared_data, tmp_path):
    """Real LungCT keypoints (3 inspiration/expiration pairs). The folder has no images and no dataset
    json, so both are stood in for: the official config's ``eval_pairs`` become ``registration_val``
    and the fixed lung masks give the grid (192x192x208, 1.75x1.25x1.75 mm, shared by both scans)."""
    lung = shared_data / "LungCT_L2R"
    config = json.loads((lung / "LungCT_VAL_evaluation_config.json").read_text())
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "keypointsTr").symlink_to(lung / "keypointsTr")
    training = []
    for pair in config["eval_pairs"]:
        mask = lung / "masksTr" / Path(pair["fixed"]).name
        for image in (pair["fixed"], pair["moving"]):
            shutil.copy(mask, tmp_path / image)  # a copy: the json reader resolves symbolic links
            training.append({"image": image})
    dataset = tmp_path / "LungCT_dataset.json"
    dataset.write_text(json.dumps({"name": "LungCT", "training": training, "registration_val": config["eval_pairs"]}))
    empty = tmp_path / "no_fields"
    empty.mkdir()
    result = evaluate_dataset(dataset, empty, allow_missing=True)
    print("\n" + format_table(result))
    spacing = np.array([1.75, 1.25, 1.75])
    initial = []
    for pair, case in zip(config["eval_pairs"], result["cases"]):
        fixed = np.loadtxt(lung / "keypointsTr" / Path(pair["fixed"]).name.replace(".nii.gz", ".csv"), delimiter=",")
        moving = np.loadtxt(lung / "keypointsTr" / Path(pair["moving"]).name.replace(".nii.gz", ".csv"), delimiter=",")
        initial.append(float(np.linalg.norm((fixed - moving) * spacing, axis=1).mean()))
        assert case["tre"] == pytest.approx(initial[-1], rel=1e-6) and case["fold_pct"] == 0.0
    assert [c["pair"] for c in result["cases"]] == ["0001_0001", "0002_0002", "0003_0003"]  # Learn2Reg's disp names
    assert result["aggregate"]["tre"]["mean"] == pytest.approx(np.mean(initial), rel=1e-6)
    assert min(initial) > 1.0  # inspiration vs expiration: keypoints really move
