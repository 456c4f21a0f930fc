"""The point route of ``regframe register``: a checkpoint of a point method
(:class:`~regframe.methods.points_base.PointRegistrationModule`) registers a CT pair through keypoint
clouds, as in CST's lung experiment (Hansen & Heinrich's route from images).

Per pair: Förstner keypoints inside each scan's mask (:func:`regframe.features.keypoints.foerstner_keypoints`,
default ``sigma``/NMS window in voxels; the ``fixed_count`` / ``moving_count`` most distinctive ones,
all of them when fewer are found), clouds in mm (``voxel x spacing``, origin at voxel 0 of each
scan, the moving scan already in the fixed orientation: the convention of
:mod:`regframe.point_clouds`), the method's estimator gives the displacement of every fixed point,
and the spline of :mod:`regframe.point_fields` (the module's ``spline_smooth_weight``) makes the
dense backward field in voxels on the fixed grid, the field every other route writes.
The clouds are in the fixed scan's array axes, and a graph CNN is not rotation invariant: as for
image checkpoints, give scans whose axis order and directions match the training data (LungCT).

Cloud sizes: those the training data module served (``datamodule_hyper_parameters`` in the checkpoint:
``served_fixed_count`` / ``served_moving_count`` of :class:`data_modules.points.PointCloudDataModule`,
e.g. 661 / 1322 on LungCT_L2R, or the configured ``fixed_count`` / ``moving_count``), else :data:`DEFAULT_FIXED_COUNT` /
:data:`DEFAULT_MOVING_COUNT` (the paper's about 1k and 2k); ``--fixed-points`` / ``--moving-points``
override both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.estimators.points import PointDisplacementEstimator
from regframe.features.keypoints import foerstner_keypoints
from regframe.io import Volume
from regframe.point_fields import dense_field
from regframe.preprocess import Preprocessing

if TYPE_CHECKING:  # the methods (and Lightning) load only when a checkpoint is used
    from regframe.methods.points_base import PointRegistrationModule

DEFAULT_FIXED_COUNT = 1000
DEFAULT_MOVING_COUNT = 2000


def keypoint_cloud(volume: Volume, mask: Volume, count: int, prep: Preprocessing) -> Tensor:
    """The ``count`` most distinctive Förstner keypoints of ``volume`` (intensities through ``prep``)
    inside ``mask``, in mm (``voxel x spacing``): ``(N, 3)`` float32, ``N <= count``."""
    image = prep.intensity(torch.from_numpy(volume.array).float())
    voxels = foerstner_keypoints(image, torch.from_numpy(mask.array != 0), max_points=count)
    if len(voxels) == 0:
        raise RegframeInputError(f"{mask.path}: no keypoints found inside this mask of {volume.path}")
    return voxels * torch.tensor(volume.spacing, dtype=torch.float32)


class KeypointRegistration:
    """A point method's estimator applied to CT pairs: keypoints in masks -> clouds -> dense field."""

    def __init__(self, estimator: PointDisplacementEstimator, fixed_count: int, moving_count: int,
                 spline_smooth_weight: float, device: str) -> None:
        self.estimator = estimator.to(device).eval()
        self.fixed_count, self.moving_count = fixed_count, moving_count
        self.spline_smooth_weight = spline_smooth_weight
        self.device = device

    def register(self, fixed: Volume, moving: Volume, fixed_mask: Volume, moving_mask: Volume,
                 prep: Preprocessing) -> tuple[Tensor, float]:
        """Displacement ``(3, *S)`` voxels on the fixed grid of one pair (``moving`` and its mask already
        in the fixed orientation, on the fixed grid's shape and spacing), and the seconds from keypoint
        detection to the dense field."""
        start = time.perf_counter()
        fixed_points = keypoint_cloud(fixed, fixed_mask, self.fixed_count, prep).to(self.device)
        moving_points = keypoint_cloud(moving, moving_mask, self.moving_count, prep).to(self.device)
        try:
            with torch.no_grad():
                displacements = self.estimator(fixed_points[None], moving_points[None]).float()
        except RegframeInputError as err:  # e.g. fewer keypoints than the graph's neighbours
            raise RegframeInputError(f"{fixed.path}, {moving.path}: {len(fixed_points)} fixed and "
                                     f"{len(moving_points)} moving keypoints: {err}") from err
        field = dense_field(fixed_points[None], displacements, fixed.array.shape, fixed.spacing,
                            self.spline_smooth_weight)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return field[0].cpu(), time.perf_counter() - start


def recorded_cloud_sizes(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """``(fixed_count, moving_count)`` the training data module served (``served_*``, after scaling to its
    smallest pair), else the ones it was configured with, recorded in ``checkpoint``; else the defaults."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    fixed = data.get("served_fixed_count", data.get("fixed_count", DEFAULT_FIXED_COUNT))
    moving = data.get("served_moving_count", data.get("moving_count", DEFAULT_MOVING_COUNT))
    return int(fixed), int(moving)


def keypoint_registration(model: PointRegistrationModule, checkpoint: dict[str, Any],
                          fixed_points: int | None, moving_points: int | None, device: str) -> KeypointRegistration:
    """The point route of a point method rebuilt from ``checkpoint``; ``fixed_points`` /
    ``moving_points`` (``--fixed-points`` / ``--moving-points``) override the recorded cloud sizes."""
    fixed_count, moving_count = recorded_cloud_sizes(checkpoint)
    fixed_count = fixed_points if fixed_points is not None else fixed_count
    moving_count = moving_points if moving_points is not None else moving_count
    return KeypointRegistration(model.estimator, fixed_count, moving_count, model.spline_smooth_weight, device)


def check_point_options(args: Any, method: type) -> None:
    """Options of image methods that have no meaning for a point checkpoint."""
    for option, given in (("--affine", args.affine), ("--resample-factor", args.resample_factor is not None)):
        if given:
            raise RegframeInputError(f"{option}: not used by the point method {method.__name__} of {args.checkpoint}")


def require_masks(jobs: list, checkpoint: Path, dataset: bool) -> None:
    """A point checkpoint detects keypoints inside masks: every pair needs both."""
    if all(job.fixed_mask is not None and job.moving_mask is not None for job in jobs):
        return
    if dataset:
        raise RegframeInputError(f"--masks: {checkpoint} is a point method; it needs each scan's mask "
                                 "(add --masks, masks from masksTr/)")
    raise RegframeInputError(f"--fixed-mask/--moving-mask: {checkpoint} is a point method; it detects keypoints "
                             "inside masks, give both")
