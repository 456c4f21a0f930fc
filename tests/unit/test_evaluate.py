"""`regframe evaluate` on a tiny Learn2Reg-layout dataset written in a temporary folder."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from regframe.errors import RegframeInputError
from regframe.evaluate import add_arguments, displacement_name, evaluate_dataset, format_table, main
from regframe.io import write_displacement

SHAPE = (12, 10, 8)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
NAMES = {1: "liver", 2: "spleen", 3: "kidney"}


def subject_labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((4, *SHAPE)), sigma=(0, 1.5, 1.5, 1.5))
    return noise.argmax(0).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    """Three subjects (0001-0003), subject 0003 a copy of 0001, pairs (1,2), (1,3), (2,3)."""
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    labels = {1: subject_labels(1), 2: subject_labels(2)}
    labels[3] = labels[1].copy()
    training = []
    for sid, array in labels.items():
        name = f"Toy_{sid:04d}_0000.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.float32), AFFINE), str(tmp_path / "imagesTr" / name))
        nib.save(nib.Nifti1Image(array, AFFINE), str(tmp_path / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    pairs = [{"fixed": f"./imagesTr/Toy_{a:04d}_0000.nii.gz", "moving": f"./imagesTr/Toy_{b:04d}_0000.nii.gz"}
             for a, b in [(1, 2), (1, 3), (2, 3)]]
    spec = {"name": "Toy", "labels": {"0": {str(k): v for k, v in NAMES.items()}}, "training": training,
            "registration_val": pairs}
    path = tmp_path / "Toy_dataset.json"
    path.write_text(json.dumps(spec))
    return path, labels


def ref_mean_dice(fixed: np.ndarray, warped: np.ndarray, moving: np.ndarray) -> float:
    labels = sorted((set(np.unique(fixed)) & set(np.unique(moving))) - {0})
    return float(np.mean([2 * np.sum((fixed == k) & (warped == k)) / (np.sum(fixed == k) + np.sum(warped == k))
                          for k in labels]))


def test_displacement_names_follow_learn2reg():
    from pathlib import Path

    from regframe.learn2reg import PairEntry, SubjectEntry

    fixed = SubjectEntry("0021", Path("imagesTr/AbdomenCTCT_0021_0000.nii.gz"))
    moving = SubjectEntry("0022", Path("imagesTr/AbdomenCTCT_0022_0000.nii.gz"))
    assert displacement_name(PairEntry(fixed, moving)) == "disp_0021_0022.nii.gz"


def test_missing_displacement_is_named(dataset, tmp_path):
    path, _ = dataset
    with pytest.raises(RegframeInputError, match="disp_0001_0002.nii.gz"):
        evaluate_dataset(path, tmp_path / "nothing_here")


def test_evaluate_scores_fields_and_zero_fills_missing(dataset, tmp_path):
    path, labels = dataset
    disp_dir = tmp_path / "disps"
    shift = torch.zeros(3, *SHAPE)
    shift[0] = 1.0  # warped(x) = moving(x + e0), border repeated
    write_displacement(disp_dir / "disp_0001_0002.nii.gz", shift, AFFINE)
    write_displacement(disp_dir / "disp_0001_0003.nii.gz", torch.zeros(3, *SHAPE), AFFINE)
    out = tmp_path / "result" / "metrics.json"
    result = evaluate_dataset(path, disp_dir, out=out, allow_missing=True)

    assert [c["pair"] for c in result["cases"]] == ["0001_0002", "0001_0003", "0002_0003"]
    assert [c["missing"] for c in result["cases"]] == [False, False, True]
    shifted = np.concatenate([labels[2][1:], labels[2][-1:]], axis=0)
    assert result["cases"][0]["dice"] == pytest.approx(ref_mean_dice(labels[1], shifted, labels[2]), abs=1e-12)
    identical = result["cases"][1]
    assert identical["dice"] == 1.0 and identical["hd95"] == 0.0 and identical["fold_pct"] == 0.0
    assert result["cases"][2]["dice"] == pytest.approx(ref_mean_dice(labels[2], labels[3], labels[3]), abs=1e-12)
    assert set(identical["dice_per_label"]) <= set(NAMES.values())
    dice = [c["dice"] for c in result["cases"]]
    assert result["aggregate"]["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert result["aggregate"]["hd95"]["n"] == 3
    assert json.loads(out.read_text()) == result  # strict JSON (no NaN) and the same content
    table = format_table(result)
    assert "0001_0002" in table and "0002_0003*" in table and "mean" in table and "p30" in table


def test_wrong_displacement_shape_is_reported(dataset, tmp_path):
    path, _ = dataset
    write_displacement(tmp_path / "d" / "disp_0001_0002.nii.gz", torch.zeros(3, 5, 5, 5), AFFINE)
    with pytest.raises(RegframeInputError, match="disp_0001_0002.nii.gz.*shape"):
        evaluate_dataset(path, tmp_path / "d", allow_missing=True, hd95=False)


def test_main_prints_table_and_returns_status(dataset, tmp_path, capsys):
    path, _ = dataset
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--dataset", str(path), "--disp-dir", str(tmp_path / "none"), "--allow-missing",
                              "--no-hd95", "--out", str(tmp_path / "m.json")])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0001_0003*" in printed and "hd95" not in printed.splitlines()[1]
    assert "hd95" not in json.loads((tmp_path / "m.json").read_text())["aggregate"]
    assert main(parser.parse_args(["--dataset", str(path), "--disp-dir", str(tmp_path / "none")])) == 2
    assert "disp_0001_0002.nii.gz" in capsys.readouterr().err
