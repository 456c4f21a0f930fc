"""Image I/O: NIfTI reads exactly as nibabel, NRRD / MetaImage read to the same array and world
affine, round trips keep axis order; bad files give errors naming the file."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from regframe.errors import RegframeInputError
from regframe.io import check_same_grid, read_displacement, read_image, read_label, write_displacement

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_image_round_trip_keeps_axes_and_spacing(tmp_path):
    array = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    vol = read_image(save(tmp_path / "a.nii.gz", array))
    np.testing.assert_array_equal(vol.array, array)
    assert vol.spacing == (2.0, 2.0, 3.0)


def _rotated_affine() -> np.ndarray:
    """Voxel sizes 0.8/1.1/2.5 mm, rotated 30 degrees about z and 10 about x, with an offset."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def test_nifti_reads_exactly_as_nibabel(tmp_path):
    rng = np.random.default_rng(1)
    image = save(tmp_path / "img.nii.gz", rng.normal(size=(5, 6, 7)).astype(np.float32), _rotated_affine())
    label = save(tmp_path / "lab.nii", rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8), _rotated_affine())
    for volume, path in ((read_image(image), image), (read_label(label), label)):
        stored = nib.load(str(path))
        np.testing.assert_array_equal(volume.array, np.asanyarray(stored.dataobj))
        np.testing.assert_array_equal(volume.affine, stored.affine)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_read_to_the_same_array_and_world_affine(tmp_path, suffix):
    array = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32)
    affine = _rotated_affine()
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS (NIfTI, regframe) <-> LPS (ITK)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    itk = sitk.GetImageFromArray(array.transpose(2, 1, 0))  # SimpleITK arrays are (z, y, x)
    itk.SetSpacing(spacing.tolist())
    itk.SetDirection((flip @ affine[:3, :3] / spacing).flatten().tolist())
    itk.SetOrigin((flip @ affine[:3, 3]).tolist())
    sitk.WriteImage(itk, str(tmp_path / f"img{suffix}"))
    volume = read_image(tmp_path / f"img{suffix}")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    nifti = read_image(save(tmp_path / "img.nii.gz", array, affine))
    np.testing.assert_allclose(volume.affine, nifti.affine, atol=1e-5)  # the NIfTI sform is float32


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"not an image")
    with pytest.raises(RegframeInputError, match="img.png: unsupported file type"):
        read_image(path)


def test_corrupt_nrrd(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_text("NRRD0004\ntype: nonsense\n")
    with pytest.raises(RegframeInputError, match="bad.nrrd: cannot read as NRRD"):
        read_image(path)


def test_displacement_round_trip_is_channel_last(tmp_path):
    disp = torch.randn(3, 4, 5, 6)
    path = write_displacement(tmp_path / "disp.nii.gz", disp, AFFINE)
    assert nib.load(str(path)).shape == (4, 5, 6, 3)
    torch.testing.assert_close(read_displacement(path, (4, 5, 6)), disp)


def test_missing_file(tmp_path):
    with pytest.raises(RegframeInputError, match="nope.nii.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(RegframeInputError, match="bad.nii.gz: cannot read as NIfTI"):
        read_image(path)


def test_nan_image(tmp_path):
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.nan
    with pytest.raises(RegframeInputError, match="nan.nii.gz: image contains 1 NaN/Inf"):
        read_image(save(tmp_path / "nan.nii.gz", array))


def test_four_d_image_where_three_d_expected(tmp_path):
    with pytest.raises(RegframeInputError, match="4d.nii.gz: expected a 3-D image"):
        read_image(save(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 2), np.float32)))


def test_multichannel_label_needs_channel(tmp_path):
    array = np.zeros((4, 4, 4, 3), np.float32)
    array[1:3, 1:3, 1:3, 1] = 1
    path = save(tmp_path / "lab.nii.gz", array)
    with pytest.raises(RegframeInputError, match="lab.nii.gz: label file has 3 channels"):
        read_label(path)
    assert read_label(path, channel=1).array.sum() == 8


def test_shape_mismatch_names_file(tmp_path):
    image = read_image(save(tmp_path / "img.nii.gz", np.zeros((4, 4, 4), np.float32)))
    label = read_label(save(tmp_path / "lab.nii.gz", np.zeros((4, 4, 5), np.uint8)))
    with pytest.raises(RegframeInputError, match=r"lab.nii.gz: shape \(4, 4, 5\) does not match"):
        check_same_grid(image, label)


def test_wrong_displacement_shape(tmp_path):
    path = write_displacement(tmp_path / "d.nii.gz", torch.zeros(3, 4, 5, 6), AFFINE)
    with pytest.raises(RegframeInputError, match="d.nii.gz: displacement shape"):
        read_displacement(path, (4, 5, 7))
