"""``regframe register`` end to end on the phantom: moving images stored in another orientation,
every bad option or output refused with one line (exit 2) before any registration, the ITK
transform and MetaImage inputs, affine pre-alignment, and ``regframe --help``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regframe import register
from regframe.cli import main
from regframe.io import read_displacement, read_image, read_label, write_nifti
from regframe.spatial import affine_to_field, compose, warp, warp_labels

SHAPE = (40, 32, 44)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-subject phantom Learn2Reg data set; returns its dataset json."""
    root = tmp_path_factory.mktemp("phantom")
    from regframe.phantom import write_phantom_dataset

    return write_phantom_dataset(root, subjects=4, shape=SHAPE, seed=0)


def pair_files(dataset: Path, index: int = 0) -> tuple[Path, Path]:
    pair = json.loads(dataset.read_text())["registration_val"][index]
    return (dataset.parent / pair["fixed"]).resolve(), (dataset.parent / pair["moving"]).resolve()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels of ``b``."""
    scores = [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in np.unique(b) if k > 0]
    return float(np.mean(scores))


def stored_as(path: Path, out: Path, kind: str) -> Path:
    """A physically identical copy of ``path`` with another axis storage: ``"lps"`` flips axes 0
    and 1 (LPS instead of RAS), ``"permuted"`` also swaps axes 0 and 2, ``"oblique"`` rotates the
    affine 20 degrees (a different physical image: refused)."""
    image = nib.load(str(path))
    array, affine = np.asanyarray(image.dataobj), image.affine
    shape = array.shape
    if kind == "oblique":
        a = math.radians(20.0)
        rotation = np.eye(4)
        rotation[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        return write_nifti(out, array, rotation @ affine)
    flip = np.array([[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    array, affine = array[::-1, ::-1], affine @ flip  # new voxel (i, j, k) is old (X-1-i, Y-1-j, k)
    if kind == "permuted":
        swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
        array, affine = array.transpose(2, 1, 0), affine @ swap
    return write_nifti(out, np.ascontiguousarray(array), affine)


@pytest.mark.parametrize("kind", ["lps", "permuted"])
def test_moving_stored_in_another_orientation_registers_as_the_original(phantom, tmp_path, kind):
    fixed, moving = pair_files(phantom)
    copy = stored_as(moving, tmp_path / f"moving_{kind}.nii.gz", kind)
    # the copy of the fixed image itself: identity registration reproduces the fixed image exactly
    fixed_copy = stored_as(fixed, tmp_path / f"fixed_{kind}.nii.gz", kind)
    assert main(["register", str(fixed), str(fixed_copy), "--out", str(tmp_path / "self"), "--method", "identity"]) == 0
    np.testing.assert_allclose(read_image(tmp_path / "self" / "warped.nii.gz").array, read_image(fixed).array,
                               atol=1e-2)  # the warp of a zero field rounds in float32

    for name, path in (("original", moving), ("copy", copy)):
        assert main(["register", str(fixed), str(path), "--out", str(tmp_path / name), "--method", "affine"]) == 0
    original, reoriented = (read_displacement(tmp_path / n / "disp.nii.gz", SHAPE) for n in ("original", "copy"))
    assert original.abs().max() > 0.5
    torch.testing.assert_close(reoriented, original)


def test_oblique_moving_image_is_refused(phantom, tmp_path, capsys):
    fixed, moving = pair_files(phantom)
    oblique = stored_as(moving, tmp_path / "oblique.nii.gz", "oblique")
    assert main(["register", str(fixed), str(oblique), "--out", str(tmp_path / "o"), "--method", "identity"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regframe register: error: ") and "oblique.nii.gz: axes are rotated" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.fixture()
def no_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a registration starts: input errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("registration started before the input error")

    monkeypatch.setattr(register, "register_pair", refuse)


def refused(capsys, argv: list[str], expected: str) -> str:
    """Run ``argv``; it must end with exit 2 and one line ``regframe register: error: ...expected...``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("regframe register: error: ") and expected in err, err
    return err


@pytest.mark.parametrize(("options", "expected"), [
    (["--out", "{tmp}/out.nii.gz"], "--out is a directory"),
    (["--resample-factor", "0"], "--resample-factor 0.0: must be > 0"),
    (["--resample-factor", "-1"], "--resample-factor -1.0: must be > 0"),
    (["--clamp", "300", "-200"], "--clamp 300 -200: LOW must be below HIGH"),
    (["--clamp", "5", "5"], "--clamp 5 5: LOW must be below HIGH"),
    (["--scale", "0"], "--scale 0.0: must be a non-zero number"),
    (["--clamp", "5000", "6000"], "has no contrast after preprocessing"),
])
def test_bad_options_are_refused_before_registration(phantom, tmp_path, capsys, no_registration, options, expected):
    fixed, moving = pair_files(phantom)
    options = [o.format(tmp=tmp_path) for o in options]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "out")]
    refused(capsys, ["register", str(fixed), str(moving), "--method", "identity", *options], expected)
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "out" / "disp.nii.gz").exists()


def test_cuda_without_cuda_is_refused(phantom, tmp_path, capsys, no_registration, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fixed, moving = pair_files(phantom)
    refused(capsys, ["register", str(fixed), str(moving), "--out", str(tmp_path), "--method", "identity",
                     "--device", "cuda"], "--device cuda: CUDA is not available")


def test_constant_image_is_refused(phantom, tmp_path, capsys, no_registration):
    fixed, _ = pair_files(phantom)
    constant = write_nifti(tmp_path / "constant.nii.gz", np.full(SHAPE, 7.0, np.float32), np.diag([2.0, 2, 2, 1]))
    refused(capsys, ["register", str(fixed), str(constant), "--out", str(tmp_path / "out"), "--method", "identity"],
            "constant.nii.gz: image has no contrast after preprocessing (every voxel is 7)")


def test_existing_outputs_need_overwrite(phantom, tmp_path, capsys, monkeypatch):
    fixed, moving = pair_files(phantom)
    argv = ["register", str(fixed), str(moving), "--out", str(tmp_path), "--method", "identity"]
    assert main(argv) == 0
    capsys.readouterr()
    first = (tmp_path / "disp.nii.gz").stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(register, "register_pair", lambda *a, **k: pytest.fail("registered before the output check"))
        refused(capsys, argv, f"{tmp_path / 'disp.nii.gz'}: exists; pass --overwrite")
    assert (tmp_path / "disp.nii.gz").stat().st_mtime_ns == first
    assert main([*argv, "--overwrite"]) == 0


def test_moving_image_named_like_an_output_is_refused(phantom, tmp_path, capsys, no_registration):
    fixed, moving = pair_files(phantom)
    inside = shutil.copy(moving, tmp_path / "warped.nii.gz")
    refused(capsys, ["register", str(fixed), str(inside), "--out", str(tmp_path), "--method", "identity", "--overwrite"],
            "warped.nii.gz: is an input image and would be overwritten")
    np.testing.assert_array_equal(read_image(inside).array, read_image(moving).array)


def test_dataset_inputs_and_outputs_are_checked_before_the_first_pair(phantom, tmp_path, capsys, no_registration):
    spec = json.loads(phantom.read_text())
    copy = tmp_path / "data"
    shutil.copytree(phantom.parent, copy)
    dataset = copy / phantom.name
    missing = copy / spec["registration_val"][-1]["moving"]
    missing.unlink()
    refused(capsys, ["register", "--dataset", str(dataset), "--out", str(tmp_path / "out"), "--method", "identity"],
            f"{missing.resolve()}: file not found")
    last = spec["registration_val"][-1]
    shutil.copy(phantom.parent / last["fixed"], missing)
    out = tmp_path / "out"
    out.mkdir()
    from regframe.learn2reg import load_dataset_json

    taken = out / f"disp_itk_{load_dataset_json(dataset).registration_val[-1].pair_id}.nii.gz"
    taken.write_bytes(b"an earlier result")
    refused(capsys, ["register", "--dataset", str(dataset), "--out", str(out), "--method", "identity"],
            f"{taken.name}: exists; pass --overwrite")
    assert sorted(p.name for p in out.iterdir()) == [taken.name]


def test_dataset_writes_learn2reg_and_itk_fields(phantom, tmp_path, capsys):
    assert main(["register", "--dataset", str(phantom), "--out", str(tmp_path), "--method", "identity"]) == 0
    from regframe.learn2reg import load_dataset_json

    for pair in load_dataset_json(phantom).registration_val:
        assert (tmp_path / f"disp_{pair.pair_id}.nii.gz").is_file()
        field = sitk.ReadImage(str(tmp_path / f"disp_itk_{pair.pair_id}.nii.gz"), sitk.sitkVectorFloat64)
        assert field.GetSize() == SHAPE and field.GetNumberOfComponentsPerPixel() == 3
        assert np.abs(sitk.GetArrayFromImage(field)).max() == 0.0  # identity: zero displacement in mm


def test_metaimage_pair_registers_like_nifti(phantom, tmp_path):
    fixed, moving = pair_files(phantom)
    for path in (fixed, moving):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(tmp_path / path.name.replace(".nii.gz", ".mha")))
    mha = [str(tmp_path / p.name.replace(".nii.gz", ".mha")) for p in (fixed, moving)]
    assert main(["register", *mha, "--out", str(tmp_path / "mha"), "--method", "affine"]) == 0
    assert main(["register", str(fixed), str(moving), "--out", str(tmp_path / "nii"), "--method", "affine"]) == 0
    by_mha, by_nifti = (read_displacement(tmp_path / n / "disp.nii.gz", SHAPE) for n in ("mha", "nii"))
    assert by_nifti.abs().max() > 0.5
    torch.testing.assert_close(by_mha, by_nifti)
    np.testing.assert_allclose(nib.load(str(tmp_path / "mha" / "disp.nii.gz")).affine, nib.load(str(fixed)).affine,
                               atol=1e-4)


def test_affine_prealignment_beats_the_method_alone(phantom, tmp_path):
    """Moving = fixed under a known global affine (10 degrees, 8 % scaling, a shift) and a smooth local
    deformation; ``--affine`` brings the local method's Dice well above the method alone."""
    fixed_path, _ = pair_files(phantom)
    fixed = read_image(fixed_path)
    fixed_labels = read_label(Path(str(fixed_path).replace("imagesTr", "labelsTr"))).array
    a, centre = math.radians(10.0), np.array(SHAPE) / 2 - 0.5
    rotation = 1.08 * np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    matrix = np.concatenate([rotation, (centre - rotation @ centre + [3.0, -2.0, 2.0])[:, None]], axis=1)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    local = 1.5 * torch.stack([torch.sin(2 * grid[1]), torch.cos(2 * grid[2]), torch.sin(2 * grid[0])])[None]
    total = compose(affine_to_field(torch.tensor(matrix, dtype=torch.float32)[None], SHAPE), local)
    moving = warp(torch.from_numpy(fixed.array)[None, None], total)[0, 0].numpy()
    moving_labels = warp_labels(torch.from_numpy(fixed_labels)[None, None], total)[0, 0].numpy()
    moving_path = write_nifti(tmp_path / "moving.nii.gz", moving, fixed.affine)

    scores = {}
    for name, extra in (("alone", []), ("prealigned", ["--affine"])):
        assert main(["register", str(fixed_path), str(moving_path), "--out", str(tmp_path / name), "--method",
                     "pyramid_mind_fast", "--clamp", "-200", "300", "--scale", "0.002", *extra]) == 0
        disp = read_displacement(tmp_path / name / "disp.nii.gz", SHAPE)
        warped = warp_labels(torch.from_numpy(moving_labels)[None, None], disp[None])[0, 0].numpy()
        scores[name] = dice(warped, fixed_labels)
    assert dice(moving_labels, fixed_labels) < 0.3
    assert scores["prealigned"] > scores["alone"] + 0.05, scores


def test_help_lists_the_tools(capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as exit_info:
            main([flag])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert all(tool in out for tool in ("register", "evaluate", "data")) and "fit" in out


def test_nothing_outside_the_masks_drives_the_registration(phantom, tmp_path, capsys):
    """Masks: two pairs that differ only outside the masks (a bright 'table' in one) give identical
    fields, while without masks the table changes the field; bad masks are refused before any work."""
    fixed_path, moving_path = pair_files(phantom)
    fixed, moving = read_image(fixed_path), read_image(moving_path)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[4:-4, 4:-10, 4:-4] = 1
    masks = [write_nifti(tmp_path / f"{side}_mask.nii.gz", mask, volume.affine)
             for side, volume in (("fixed", fixed), ("moving", moving))]
    with_table = moving.array.copy()
    with_table[:, -6:, :] = 2000.0                                          # outside the moving mask
    table_path = write_nifti(tmp_path / "moving_table.nii.gz", with_table, moving.affine)
    fields = {}
    for name, source, extra in (("plain", moving_path, []), ("table", table_path, []),
                                ("plain_masked", moving_path, ["--fixed-mask", str(masks[0]), "--moving-mask", str(masks[1])]),
                                ("table_masked", table_path, ["--fixed-mask", str(masks[0]), "--moving-mask", str(masks[1])])):
        out = tmp_path / name
        assert main(["register", str(fixed_path), str(source), "--out", str(out), "--method", "affine", *extra]) == 0
        fields[name] = read_displacement(out / "disp.nii.gz", SHAPE)
    torch.testing.assert_close(fields["plain_masked"], fields["table_masked"], rtol=0, atol=0)
    assert (fields["plain"] - fields["table"]).abs().max() > 0.1
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros(SHAPE, dtype=np.uint8), fixed.affine)
    small = write_nifti(tmp_path / "small.nii.gz", mask[:-2], fixed.affine)
    for bad, fragment in ((empty, "empty"), (small, "grid differs")):
        assert main(["register", str(fixed_path), str(moving_path), "--out", str(tmp_path / "bad"),
                     "--method", "affine", "--fixed-mask", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad.name in err and fragment in err
    assert not (tmp_path / "bad").exists()
