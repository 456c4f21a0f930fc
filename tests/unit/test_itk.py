"""ITK displacement-field files: SimpleITK resampling the moving image with the written transform
reproduces regframe's own warped image, on a rotated, flipped, anisotropic grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from regframe.io import Volume, write_nifti
from regframe.itk import write_itk_displacement
from regframe.orientation import reorient_volume
from regframe.spatial import warp

SHAPE = (20, 24, 18)


def rotated_flipped_affine() -> np.ndarray:
    """0.8 / 1.1 / 2.5 mm voxels, axis 1 flipped, rotated 30 degrees about z and 10 about x, offset."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, -1.1, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


def smooth_image() -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    return (np.exp(-3 * ((grid[0] - 0.1) ** 2 + (grid[1] + 0.2) ** 2 + grid[2] ** 2))
            + 0.5 * np.sin(3 * grid[0]) * np.cos(2 * grid[1] + grid[2])).astype(np.float32)


def smooth_field() -> torch.Tensor:
    """A non-trivial smooth field ``(3, *SHAPE)`` in voxels, up to about 2 voxels."""
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    return torch.stack([2.0 * torch.sin(2 * grid[1]) * torch.cos(grid[2]),
                        -1.5 * torch.cos(2 * grid[0]) + 0.5 * grid[2],
                        1.2 * torch.sin(grid[0] + grid[1])])


def itk_resampled(fixed_path, moving_path, transform_path) -> np.ndarray:
    """The moving file resampled by SimpleITK on the fixed grid through the transform file, as an
    array in regframe axis order ``(X, Y, Z)``."""
    field = sitk.ReadImage(str(transform_path), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    fixed, moving = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def interior(disp: torch.Tensor, margin: float = 1.0) -> np.ndarray:
    """Voxels whose sampling point ``x + u`` stays ``margin`` voxels inside the grid (no border effects)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))
    point = grid + disp
    inside = torch.ones(SHAPE, dtype=torch.bool)
    for axis, n in enumerate(SHAPE):
        inside &= (point[axis] >= margin) & (point[axis] <= n - 1 - margin)
    return inside.numpy()


def test_simpleitk_resampling_with_the_written_field_matches_regframe_warp(tmp_path):
    affine, moving, disp = rotated_flipped_affine(), smooth_image(), smooth_field()
    fixed_path = write_nifti(tmp_path / "fixed.nii.gz", np.zeros(SHAPE, np.float32), affine)
    moving_path = write_nifti(tmp_path / "moving.nii.gz", moving, affine)
    transform_path = write_itk_displacement(tmp_path / "disp_itk.nii.gz", disp, affine)
    header = nib.load(str(transform_path)).header
    assert header.get_data_shape() == (*SHAPE, 1, 3) and header.get_intent()[0] == "vector"

    warped = warp(torch.from_numpy(moving)[None, None], disp[None])[0, 0].numpy()
    by_itk = itk_resampled(fixed_path, moving_path, transform_path)
    mask = interior(disp)
    assert mask.mean() > 0.5
    difference = np.abs(by_itk[mask] - warped[mask]).max()
    assert difference < 1e-3 * np.abs(moving).max(), difference


def test_field_of_a_moving_image_stored_in_another_orientation(tmp_path):
    """regframe registers the moving image reoriented to the fixed axes; the ITK field maps to the
    moving file's own world coordinates, so ITK resamples the file as stored (LPS, other origin)."""
    affine, moving, disp = rotated_flipped_affine(), smooth_image(), smooth_field()
    lps = affine @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    lps[:3, 3] += [3.0, -2.0, 5.0]  # and a shifted origin: registration is in voxels, ITK in mm
    fixed_path = write_nifti(tmp_path / "fixed.nii.gz", np.zeros(SHAPE, np.float32), affine)
    moving_path = write_nifti(tmp_path / "moving.nii.gz", moving[::-1, ::-1].copy(), lps)
    reoriented = reorient_volume(Volume(moving[::-1, ::-1].copy(), lps, moving_path), affine, fixed_path)
    np.testing.assert_array_equal(reoriented.array, moving)

    transform_path = write_itk_displacement(tmp_path / "disp_itk.nii.gz", disp, affine, reoriented.affine)
    warped = warp(torch.from_numpy(reoriented.array)[None, None], disp[None])[0, 0].numpy()
    by_itk = itk_resampled(fixed_path, moving_path, transform_path)
    mask = interior(disp)
    assert np.abs(by_itk[mask] - warped[mask]).max() < 1e-3 * np.abs(moving).max()
