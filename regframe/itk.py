"""regframe displacements as ITK displacement-field transforms (SimpleITK, ANTs, elastix, 3D Slicer).

A regframe field ``u`` is in voxels (channel ``i`` along array axis ``i``) on the fixed grid, a
backward map: ``warped(x) = moving(x + u(x))``. ITK's ``DisplacementFieldTransform`` maps a fixed
physical point ``p`` (mm, LPS) to the moving physical point ``p + d(p)``, and its field is a vector
image on the fixed grid. With world coordinates ``A_f x`` (fixed) and ``A_m x`` (moving, the affines
in RAS that regframe reads) the field is ``d = A_m (x + u) - A_f x``, i.e. ``A_f[:3, :3] u`` when
both images share a grid, then RAS -> LPS by negating the first two components.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _sitk_geometry(image: sitk.Image, affine: np.ndarray) -> sitk.Image:
    """Give ``image`` the origin, spacing and direction (LPS) of a RAS voxel-to-world ``affine``."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((RAS_TO_LPS @ affine[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((RAS_TO_LPS @ affine[:3, 3]).tolist())
    return image


def _to_world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """World coordinates (mm, RAS) ``(3, *S)`` of voxel coordinates ``(3, *S)``."""
    return np.einsum("ij,j...->i...", affine[:3, :3], voxels) + affine[:3, 3].reshape(3, 1, 1, 1)


def displacement_to_itk(disp: torch.Tensor | np.ndarray, affine: np.ndarray,
                        moving_affine: np.ndarray | None = None) -> sitk.Image:
    """ITK displacement field (``sitkVectorFloat64``, mm, LPS, on the fixed grid) of a regframe
    displacement ``(3, X, Y, Z)`` in voxels; ``affine`` is the fixed image's 4x4 RAS affine and
    ``moving_affine`` the moving image's (default: the same grid)."""
    u = disp.detach().cpu().double().numpy() if isinstance(disp, torch.Tensor) else np.asarray(disp, np.float64)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"displacement must be (3, X, Y, Z) in voxels, got {u.shape}")
    moving_affine = affine if moving_affine is None else moving_affine
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in u.shape[1:]], indexing="ij"))
    world = _to_world(moving_affine, grid + u) - _to_world(affine, grid)  # (3, X, Y, Z) mm, RAS
    lps = np.einsum("ij,j...->...i", RAS_TO_LPS, world)  # (X, Y, Z, 3)
    image = sitk.GetImageFromArray(np.ascontiguousarray(lps.transpose(2, 1, 0, 3)), isVector=True)  # (z, y, x, 3)
    return _sitk_geometry(image, affine)


def write_itk_displacement(path: str | Path, disp: torch.Tensor | np.ndarray, affine: np.ndarray,
                           moving_affine: np.ndarray | None = None) -> Path:
    """Write :func:`displacement_to_itk` as a NIfTI vector image (5-D ``(X, Y, Z, 1, 3)``, vector
    intent, as ITK and ANTs write transforms), atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    sitk.WriteImage(displacement_to_itk(disp, affine, moving_affine), str(tmp))
    tmp.replace(path)
    return path
