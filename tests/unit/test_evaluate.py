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


def file_stem(subject: int | str) -> str:
    """``1`` -> ``Toy_0001_0000``; a string names the file itself, e.g. ``"0001_0001"`` -> ``Toy_0001_0001``."""
    return f"Toy_{subject:04d}_0000" if isinstance(subject, int) else f"Toy_{subject}"


def write_dataset(root, labels: dict, names: dict[int, str], pairs: list[tuple], keypoints: dict | None = None,
                  label_files: bool = True, affine=AFFINE):
    """Learn2Reg layout under ``root`` (subjects keyed as :func:`file_stem` takes them): images (the
    labels as intensities), optional ``labelsTr`` (4-D arrays are written channel-last as they are)
    and ``keypointsTr``; returns the json path."""
    for folder in ("imagesTr", "labelsTr", "keypointsTr"):
        (root / folder).mkdir(exist_ok=True)
    training = []
    for sid, array in labels.items():
        name = f"{file_stem(sid)}.nii.gz"
        image = array if array.ndim == 3 else array.argmax(-1)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "imagesTr" / name))
        training.append({"image": f"./imagesTr/{name}"})
        if label_files:
            nib.save(nib.Nifti1Image(array, affine), str(root / "labelsTr" / name))
            training[-1]["label"] = f"./labelsTr/{name}"
        if keypoints is not None and sid in keypoints:
            np.savetxt(root / "keypointsTr" / f"{file_stem(sid)}.csv", keypoints[sid], delimiter=",", fmt="%.3f")
    spec = {"name": "Toy", "labels": {"0": {str(k): v for k, v in names.items()}}, "training": training,
            "registration_val": [{"fixed": f"./imagesTr/{file_stem(a)}.nii.gz",
                                  "moving": f"./imagesTr/{file_stem(b)}.nii.gz"} for a, b in pairs]}
    path = root / "Toy_dataset.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def dataset(tmp_path):
    """Three subjects (0001-0003), subject 0003 a copy of 0001, pairs (1,2), (1,3), (2,3)."""
    labels = {1: subject_labels(1), 2: subject_labels(2)}
    labels[3] = labels[1].copy()
    return write_dataset(tmp_path, labels, NAMES, [(1, 2), (1, 3), (2, 3)]), labels


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
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal
    assert main(parser.parse_args(["--dataset", str(path), "--disp-dir", str(tmp_path / "none")])) == 2
    assert "disp_0001_0002.nii.gz" in capsys.readouterr().err


def test_only_labels_listed_in_the_json_are_scored(tmp_path):
    labels = {1: subject_labels(1), 2: subject_labels(2)}
    assert {3} <= set(np.unique(labels[1])) & set(np.unique(labels[2]))
    listed = {1: "liver", 2: "spleen"}
    path = write_dataset(tmp_path, labels, listed, [(1, 2)])
    result = evaluate_dataset(path, tmp_path / "none", allow_missing=True, hd95=False)
    case = result["cases"][0]
    assert set(case["dice_per_label"]) == {"liver", "spleen"}
    fixed, moving = labels[1], labels[2]
    expected = np.mean([2 * np.sum((fixed == k) & (moving == k)) / (np.sum(fixed == k) + np.sum(moving == k))
                        for k in (1, 2)])
    assert case["dice"] == pytest.approx(expected, abs=1e-12)
    assert result["unlisted_labels"] == [3]
    assert "ids [3] in the label files are not listed there and not scored" in format_table(result)


def test_label_channel_picks_one_channel_of_4d_label_files(tmp_path, capsys):
    onehot = {sid: np.stack([subject_labels(sid) == k for k in range(4)], axis=-1).astype(np.uint8) for sid in (1, 2)}
    path = write_dataset(tmp_path, onehot, {1: "organ"}, [(1, 2)])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--dataset", str(path), "--disp-dir", str(tmp_path / "none"), "--allow-missing", "--no-hd95"]
    assert main(parser.parse_args(argv)) == 2
    assert "label_channel" in capsys.readouterr().err
    assert main(parser.parse_args([*argv, "--label-channel", "2", "--out", str(tmp_path / "m.json")])) == 0
    fixed, moving = onehot[1][..., 2], onehot[2][..., 2]
    expected = 2 * np.sum(fixed & moving) / (np.sum(fixed) + np.sum(moving))
    assert json.loads((tmp_path / "m.json").read_text())["cases"][0]["dice"] == pytest.approx(expected, abs=1e-12)


def test_tre_from_keypoints_in_mm(tmp_path):
    """Moving keypoints = fixed + (1, -2, 0.5) voxels, spacing (2, 1, 3) mm: TRE at the zero field is the
    initial distance |(2, -2, 1.5)| mm; the matching translation gives 0; labels still scored."""
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    rng = np.random.default_rng(3)
    fixed_points = rng.uniform(2, 6, size=(20, 3))
    offset = np.array([1.0, -2.0, 0.5])
    keypoints = {1: fixed_points, 2: fixed_points + offset, 3: fixed_points + 2 * offset}
    labels = {sid: subject_labels(sid) for sid in (1, 2, 3)}
    path = write_dataset(tmp_path, labels, NAMES, [(1, 2), (1, 3)], keypoints=keypoints, affine=affine)
    shift = torch.zeros(3, *SHAPE)
    shift[:] = torch.tensor(offset).view(3, 1, 1, 1)
    write_displacement(tmp_path / "d" / "disp_0001_0002.nii.gz", shift, affine)
    result = evaluate_dataset(path, tmp_path / "d", allow_missing=True, hd95=False)
    initial = np.linalg.norm(2 * offset * np.array([2.0, 1.0, 3.0]))
    assert result["cases"][0]["tre"] == pytest.approx(0.0, abs=1e-4)
    assert result["cases"][1]["tre"] == pytest.approx(initial, abs=1e-4)
    assert result["aggregate"]["tre"]["mean"] == pytest.approx(initial / 2, abs=1e-4)
    assert result["aggregate"]["tre"]["p30"] == pytest.approx(0.3 * initial, abs=1e-4)
    assert result["aggregate"]["tre"]["n"] == 2 and "dice" in result["cases"][0]
    assert "tre mm" in format_table(result).splitlines()[1]


def test_keypoints_without_labels_give_tre_and_jacobian_metrics(tmp_path):
    """LungCT layout: two scans of one patient (``_0000`` fixed, ``_0001`` moving) share the subject id."""
    points = np.array([[2.0, 3.0, 4.0], [5.0, 1.0, 2.0]])
    labels = {"0001_0000": subject_labels(1), "0001_0001": subject_labels(2)}
    path = write_dataset(tmp_path, labels, {}, [("0001_0000", "0001_0001")],
                         keypoints={"0001_0000": points, "0001_0001": points + 1}, label_files=False)
    result = evaluate_dataset(path, tmp_path / "none", allow_missing=True)
    case = result["cases"][0]
    assert case["pair"] == "0001_0001"  # Learn2Reg's displacement name disp_0001_0001.nii.gz
    assert case["tre"] == pytest.approx(np.linalg.norm([2.0, 2.0, 2.0]), abs=1e-5)
    assert "dice" not in case and case["fold_pct"] == 0.0
    assert "dice" not in format_table(result).splitlines()[1]


def test_landmarks_give_their_own_tre_beside_the_keypoints(tmp_path):
    """LungCT layout with keypoints and expert landmarks (``landmarksTr``): the field that moves the
    keypoints exactly leaves the landmarks, which moved differently, at a known distance."""
    affine = np.diag([1.75, 1.25, 1.75, 1.0])
    keypoints = np.array([[2.0, 3.0, 4.0], [5.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
    labels = {"0001_0000": subject_labels(1), "0001_0001": subject_labels(2)}
    path = write_dataset(tmp_path, labels, {}, [("0001_0000", "0001_0001")], label_files=False, affine=affine,
                         keypoints={"0001_0000": keypoints, "0001_0001": keypoints + [1.0, 0.0, 0.0]})
    (tmp_path / "landmarksTr").mkdir()
    landmarks = np.array([[4.0, 4.0, 4.0], [6.0, 2.0, 5.0]])
    for stem, points in (("Toy_0001_0000", landmarks), ("Toy_0001_0001", landmarks + [1.0, 2.0, 0.0])):
        np.savetxt(tmp_path / "landmarksTr" / f"{stem}.csv", points, delimiter=",")
    shift = torch.zeros(3, *SHAPE)
    shift[0] = 1.0
    write_displacement(tmp_path / "d" / "disp_0001_0001.nii.gz", shift, affine)
    case = evaluate_dataset(path, tmp_path / "d")["cases"][0]
    assert case["tre"] == pytest.approx(0.0, abs=1e-5)
    assert case["tre_landmarks"] == pytest.approx(2 * 1.25, abs=1e-5)  # 2 voxels along axis 1, in mm
    initial = evaluate_dataset(path, tmp_path / "none", allow_missing=True)
    assert initial["cases"][0]["tre_landmarks"] == pytest.approx(np.hypot(1.75, 2 * 1.25), abs=1e-5)
    assert "tre lm mm" in format_table(initial).splitlines()[1]
    (tmp_path / "landmarksTr" / "Toy_0001_0001.csv").unlink()
    with pytest.raises(RegframeInputError, match="Toy_0001_0000.csv: landmarks found, but none for"):
        evaluate_dataset(path, tmp_path / "d")


def test_keypoint_errors_are_named_before_scoring(tmp_path):
    points = np.ones((4, 3))
    labels = {1: subject_labels(1), 2: subject_labels(2)}
    path = write_dataset(tmp_path, labels, NAMES, [(1, 2)], keypoints={1: points})
    with pytest.raises(RegframeInputError, match="Toy_0001_0000.csv.*none for .*Toy_0002_0000.nii.gz"):
        evaluate_dataset(path, tmp_path / "none", allow_missing=True)
    np.savetxt(tmp_path / "keypointsTr" / "Toy_0002_0000.csv", points[:3], delimiter=",")
    with pytest.raises(RegframeInputError, match="Toy_0002_0000.csv.*do not correspond"):
        evaluate_dataset(path, tmp_path / "none", allow_missing=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    no_labels = write_dataset(bare, labels, NAMES, [(1, 2)], label_files=False)
    with pytest.raises(RegframeInputError, match="no label file and no keypoints"):
        evaluate_dataset(no_labels, tmp_path / "none", allow_missing=True)


def test_lpba40_groups_are_scored_as_merged_labels(tmp_path, capsys):
    # LONI codes: 21/22 (frontal) and 161/162 (hippocampus); the moving map swaps left and right
    fixed = np.zeros(SHAPE, np.uint8)
    fixed[:6, :5] = 21
    fixed[:6, 5:] = 22
    fixed[6:, :3] = 161
    moving = fixed.copy()
    moving[fixed == 21], moving[fixed == 22] = 22, 21
    moving[6:, :3] = 0
    moving[6:, :2] = 162
    names = {21: "L frontal a", 22: "R frontal a", 161: "L hippocampus", 162: "R hippocampus"}
    path = write_dataset(tmp_path, {1: fixed, 2: moving}, names, [(1, 2)])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--dataset", str(path), "--disp-dir", str(tmp_path / "none"), "--allow-missing", "--no-hd95",
            "--label-groups", "lpba40", "--out", str(tmp_path / "m.json")]
    assert main(parser.parse_args(argv)) == 0
    assert "dice grp" in capsys.readouterr().out
    case = json.loads((tmp_path / "m.json").read_text())["cases"][0]
    hippocampus = 2 * (6 * 2 * 8) / (6 * 3 * 8 + 6 * 2 * 8)
    assert case["dice_groups"] == pytest.approx({"frontal": 1.0, "hippocampus": hippocampus})
    assert case["dice_grouped"] == pytest.approx((1.0 + hippocampus) / 2)
    assert case["dice"] == pytest.approx(0.0)  # every structure swapped or moved to another code
    with pytest.raises(RegframeInputError, match="label groups 'abdomen' unknown"):
        evaluate_dataset(path, tmp_path / "none", allow_missing=True, label_groups="abdomen")
