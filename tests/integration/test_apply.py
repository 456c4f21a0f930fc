"""`regframe apply`: warping images, label maps and points with a saved field (known answers), and
the refusals that keep a user from warping something on the wrong grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from regframe.io import read_image, write_displacement, write_nifti
from regframe.points import moving_to_fixed
from regframe.tools import run_tool

SHAPE = (20, 18, 16)
SHIFT = (2.0, -1.0, 3.0)  # voxels: warped(x) = moving(x + SHIFT)
FIXED_AFFINE = np.array([[2.0, 0, 0, 10.0], [0, 2.0, 0, -4.0], [0, 0, 2.5, 0.0], [0, 0, 0, 1]])
MOVING_AFFINE = FIXED_AFFINE + np.array([[0, 0, 0, -3.0], [0, 0, 0, 5.0], [0, 0, 0, 1.5], [0, 0, 0, 0]])


def translation() -> torch.Tensor:
    disp = torch.zeros(3, *SHAPE)
    for axis, value in enumerate(SHIFT):
        disp[axis] = value
    return disp


def smooth_field() -> torch.Tensor:
    """A smooth field with spatial derivatives well below 1 (invertible, no folding)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))
    return torch.stack([1.5 * torch.sin(grid[1] / 5.0 + 0.3), -1.2 * torch.cos(grid[2] / 4.0) * torch.sin(grid[0] / 6.0),
                        0.8 * torch.sin((grid[0] + grid[1]) / 7.0)])


@pytest.fixture
def files(tmp_path):
    """Field (translation) on the fixed grid; image, labels and a 4-D label file on the fixed grid
    (``*_fixed_grid``) and on a moving grid with another origin (``*_moving_grid``)."""
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.standard_normal(SHAPE), 1.0).astype(np.float32)
    labels = ndi.gaussian_filter(rng.standard_normal((4, *SHAPE)), (0, 2, 2, 2)).argmax(0).astype(np.uint8)
    paths = {"disp": write_displacement(tmp_path / "disp.nii.gz", translation(), FIXED_AFFINE)}
    for grid, affine in (("fixed_grid", FIXED_AFFINE), ("moving_grid", MOVING_AFFINE)):
        paths[f"image_{grid}"] = write_nifti(tmp_path / f"image_{grid}.nii.gz", image, affine)
        paths[f"labels_{grid}"] = write_nifti(tmp_path / f"labels_{grid}.nii.gz", labels, affine)
    onehot = np.stack([labels == k for k in range(4)], axis=-1).astype(np.uint8)
    paths["onehot"] = write_nifti(tmp_path / "onehot.nii.gz", onehot, FIXED_AFFINE)
    return paths, image, labels


def shifted(array: np.ndarray) -> np.ndarray:
    """``array(x + SHIFT)`` on the voxels where ``x + SHIFT`` stays inside the grid (NaN elsewhere)."""
    out = np.full(array.shape, np.nan)
    dx, dy, dz = (int(s) for s in SHIFT)
    out[: SHAPE[0] - dx, 1:, : SHAPE[2] - dz] = array[dx:, : SHAPE[1] + dy, dz:]
    return out


def read(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def test_translation_moves_image_and_labels_by_exactly_the_shift(files, tmp_path):
    paths, image, labels = files
    assert run_tool(["apply", str(paths["disp"]), "--image", str(paths["image_fixed_grid"]),
                     "--out", str(tmp_path / "warped.nii.gz")]) == 0
    warped, affine = read(tmp_path / "warped.nii.gz")
    expected = shifted(image)
    inside = ~np.isnan(expected)
    assert np.allclose(warped[inside], expected[inside], atol=1e-5) and np.allclose(affine, FIXED_AFFINE)

    for interp in ("nearest", "onehot"):
        out = tmp_path / f"labels_{interp}.nii.gz"
        assert run_tool(["apply", str(paths["disp"]), "--labels", str(paths["labels_fixed_grid"]),
                         "--label-interp", interp, "--out", str(out)]) == 0
        warped_labels, _ = read(out)
        assert warped_labels.dtype == np.uint8
        assert np.array_equal(warped_labels[inside], shifted(labels)[inside])


def test_moving_grid_with_another_origin_and_4d_labels(files, tmp_path):
    paths, image, labels = files
    out = tmp_path / "warped.nii.gz"
    assert run_tool(["apply", str(paths["disp"]), "--image", str(paths["image_moving_grid"]),
                     "--moving-grid", str(paths["image_moving_grid"]), "--out", str(out)]) == 0
    warped, affine = read(out)
    inside = ~np.isnan(shifted(image))
    assert np.allclose(warped[inside], shifted(image)[inside], atol=1e-5) and np.allclose(affine, FIXED_AFFINE)
    channel_out = tmp_path / "channel2.nii.gz"
    assert run_tool(["apply", str(paths["disp"]), "--labels", str(paths["onehot"]), "--label-channel", "2",
                     "--out", str(channel_out)]) == 0
    assert np.array_equal(read(channel_out)[0][inside], shifted(labels == 2)[inside])


def write_points(path, points: np.ndarray):
    np.savetxt(path, points, delimiter=",", fmt="%.6f")
    return path


def apply_points(disp, points_csv, out, *options) -> np.ndarray:
    assert run_tool(["apply", str(disp), "--points", str(points_csv), "--out", str(out), *options]) == 0
    return np.loadtxt(out, delimiter=",", ndmin=2)


def test_translation_moves_points_both_ways_in_voxels_and_mm(files, tmp_path):
    paths, _, _ = files
    points = np.array([[3.0, 4.0, 5.0], [10.5, 2.25, 7.0], [0.0, 17.0, 1.0]])
    csv = write_points(tmp_path / "points.csv", points)
    shift = np.array(SHIFT)
    to_moving = apply_points(paths["disp"], csv, tmp_path / "to_moving.csv")
    assert np.allclose(to_moving, points + shift, atol=1e-6)
    to_fixed = apply_points(paths["disp"], csv, tmp_path / "to_fixed.csv", "--points-space", "moving")
    assert np.allclose(to_fixed, points - shift, atol=1e-5)

    def world(affine, voxels):
        return voxels @ affine[:3, :3].T + affine[:3, 3]

    mm_csv = write_points(tmp_path / "points_mm.csv", world(FIXED_AFFINE, points))
    grid = ["--moving-grid", str(paths["image_moving_grid"]), "--points-units", "mm"]
    mm_moving = apply_points(paths["disp"], mm_csv, tmp_path / "mm_moving.csv", *grid)
    assert np.allclose(mm_moving, world(MOVING_AFFINE, points + shift), atol=1e-5)
    mm_back = apply_points(paths["disp"], tmp_path / "mm_moving.csv", tmp_path / "mm_back.csv", *grid,
                           "--points-space", "moving")
    assert np.allclose(mm_back, world(FIXED_AFFINE, points), atol=1e-4)


def test_inverse_point_mapping_round_trips_on_a_smooth_field(tmp_path):
    disp = smooth_field()
    path = write_displacement(tmp_path / "smooth.nii.gz", disp, FIXED_AFFINE)
    rng = np.random.default_rng(1)
    points = rng.uniform(2.0, np.array(SHAPE) - 3.0, size=(50, 3))
    moving = apply_points(path, write_points(tmp_path / "p.csv", points), tmp_path / "moving.csv")
    assert np.abs(moving - points).max() > 0.5  # the field really moves the points
    back = apply_points(path, tmp_path / "moving.csv", tmp_path / "back.csv", "--points-space", "moving")
    assert np.abs(back - points).max() < 1e-3
    inversion = moving_to_fixed(disp, torch.from_numpy(moving))
    assert inversion.residual.max().item() < 1e-4 and 1 < inversion.iterations < 200


def test_folding_field_warns_about_points_that_do_not_invert(tmp_path, capsys):
    disp = torch.zeros(3, *SHAPE)
    disp[0] = 6.0 * torch.sin(torch.arange(SHAPE[0], dtype=torch.float32) / 1.5)[:, None, None]  # slope 4: folds
    path = write_displacement(tmp_path / "fold.nii.gz", disp, FIXED_AFFINE)
    csv = write_points(tmp_path / "p.csv", np.array([[9.0, 5.0, 5.0], [4.0, 4.0, 4.0]]))
    apply_points(path, csv, tmp_path / "out.csv", "--points-space", "moving")
    assert "did not invert" in capsys.readouterr().err


def expect_error(capsys, argv: list[str], *fragments: str) -> None:
    assert run_tool(["apply", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_refuses_inputs_on_the_wrong_grid(files, tmp_path, capsys):
    paths, image, _ = files
    out = str(tmp_path / "out.nii.gz")
    disp = str(paths["disp"])
    expect_error(capsys, [disp, "--image", str(paths["image_moving_grid"]), "--out", out],
                 "image_moving_grid.nii.gz", "affine differs", "--moving-grid")
    expect_error(capsys, [disp, "--image", str(paths["image_fixed_grid"]), "--moving-grid",
                          str(paths["image_moving_grid"]), "--out", out], "image_fixed_grid.nii.gz", "affine differs")
    small = write_nifti(tmp_path / "small.nii.gz", image[:10], FIXED_AFFINE)
    expect_error(capsys, [disp, "--image", str(small), "--out", out], "small.nii.gz", "shape")
    oblique = write_nifti(tmp_path / "oblique.nii.gz", image,
                          MOVING_AFFINE @ np.array([[0.9, -0.436, 0, 0], [0.436, 0.9, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    expect_error(capsys, [disp, "--image", str(oblique), "--moving-grid", str(oblique), "--out", out], "oblique.nii.gz")
    coarse = write_nifti(tmp_path / "coarse.nii.gz", image, np.diag([3.0, 3.0, 3.0, 1.0]))
    expect_error(capsys, [disp, "--image", str(coarse), "--moving-grid", str(coarse), "--out", out], "spacing")
    expect_error(capsys, [disp, "--labels", str(paths["onehot"]), "--out", out], "onehot.nii.gz", "label_channel")
    assert not (tmp_path / "out.nii.gz").exists()


def test_moving_image_stored_in_lps_warps_like_the_original(files, tmp_path):
    """The same physical moving image stored with flipped axes (LPS instead of RAS) is reoriented to
    the field's axes, so it warps exactly like the original."""
    paths, _, _ = files
    original = read_image(paths["image_moving_grid"])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [s - 1 for s in original.array.shape[:2]]              # voxel i -> n-1-i on axes 0, 1
    lps = write_nifti(tmp_path / "lps.nii.gz", original.array[::-1, ::-1].copy(), original.affine @ flip)
    outputs = []
    for name, source in (("a", paths["image_moving_grid"]), ("b", lps)):
        out = tmp_path / f"{name}.nii.gz"
        assert run_tool(["apply", str(paths["disp"]), "--image", str(source), "--moving-grid", str(source),
                         "--out", str(out)]) == 0
        outputs.append(read(out))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


def test_refuses_bad_options_and_never_overwrites_silently(files, tmp_path, capsys):
    paths, _, _ = files
    disp, image = str(paths["disp"]), str(paths["image_fixed_grid"])
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    expect_error(capsys, [disp, "--image", image, "--out", str(out)], "out.nii.gz", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert run_tool(["apply", disp, "--image", image, "--out", str(out), "--overwrite"]) == 0
    assert read(out)[0].shape == SHAPE
    expect_error(capsys, [disp, "--image", image, "--out", image, "--overwrite"], "one of the inputs")
    expect_error(capsys, [disp, "--image", image, "--out", str(tmp_path)], "folder")
    expect_error(capsys, [disp, "--image", image, "--out", str(tmp_path / "out.csv")], "NIfTI")
    expect_error(capsys, [disp, "--image", image, "--out", str(tmp_path / "o.nii.gz"), "--label-interp", "onehot"],
                 "--label-interp")
    csv = write_points(tmp_path / "p.csv", np.ones((2, 3)))
    expect_error(capsys, [disp, "--points", str(csv), "--out", str(tmp_path / "o.csv"), "--points-units", "mm"],
                 "--moving-grid")
    flat = write_points(tmp_path / "flat.csv", np.ones((2, 2)))
    expect_error(capsys, [disp, "--points", str(flat), "--out", str(tmp_path / "o.csv")], "flat.csv", "3")
    not_a_field = write_nifti(tmp_path / "scalar.nii.gz", np.zeros(SHAPE, np.float32), FIXED_AFFINE)
    expect_error(capsys, [str(not_a_field), "--image", image, "--out", str(tmp_path / "o.nii.gz")],
                 "scalar.nii.gz", "Learn2Reg layout")
    expect_error(capsys, [str(tmp_path / "missing.nii.gz"), "--image", image, "--out", str(tmp_path / "o.nii.gz")],
                 "missing.nii.gz", "not found")
    assert not any(p.name.startswith("o.") for p in tmp_path.iterdir())
