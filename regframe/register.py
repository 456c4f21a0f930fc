"""``regframe register``: apply a training-free method or a trained checkpoint to image pairs.

Writes, on the fixed grid with its affine: the Learn2Reg displacement (channel-last, voxels), the
same field as an ITK displacement-field transform (mm, LPS; :mod:`regframe.itk`) and, for a single
pair, the warped moving image; prints the time per pair. Optional masks restrict what drives the
registration: outside a mask the image is set to its background before estimation. A moving image stored in another axis
order or direction is reoriented to the fixed image first (:mod:`regframe.orientation`). Every
option, input file and output name is checked before the first registration starts.

A checkpoint of a point method (:class:`~regframe.methods.points_base.PointRegistrationModule`)
registers through keypoint clouds detected inside both masks, which it requires
(:mod:`regframe.register_points`); it writes the same files.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from torch import Tensor

from regframe.checkpoint import read_checkpoint, recorded_preprocessing
from regframe.errors import RegframeInputError
from regframe.estimators.base import DisplacementEstimator
from regframe.estimators.prealigned import AffinePrealigned
from regframe.estimators.registry import METHOD_OPTIONS, TRAINING_FREE, build_training_free, mind_refined
from regframe.evaluate import displacement_name
from regframe.io import Volume, image_stem, read_image, read_label, write_displacement, write_nifti
from regframe.itk import write_itk_displacement
from regframe.learn2reg import load_dataset_json
from regframe.orientation import Grid, check_pair_grid, reorient_volume
from regframe.plugins import import_plugins
from regframe.preprocess import Preprocessing
from regframe.register_points import KeypointRegistration, check_point_options, keypoint_registration, require_masks
from regframe.spatial import resize_field, warp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", nargs="?", help="fixed image (.nii, .nii.gz, .nrrd, .mha/.mhd)")
    parser.add_argument("moving", nargs="?", help="moving image: the fixed grid in any axis order/direction")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    parser.add_argument("--dataset", type=Path, help="{Task}_dataset.json: register every registration_val pair")
    parser.add_argument("--method", help="training-free method NAME or NAME:KEY=VALUE,... (see --list-methods)")
    parser.add_argument("--checkpoint", type=Path,
                        help="checkpoint of a trained regframe method, or of SAM embedding pre-training "
                             "(AnatomicalEmbeddingPretraining: registers with SAMConvex on that embedding)")
    parser.add_argument("--affine", action="store_true",
                        help="affine pre-alignment (IterativeAffineEstimator) before the method; fields composed")
    parser.add_argument("--adam", type=int, metavar="N",
                        help="--checkpoint: refine the network's field with N Adam iterations on MIND-SSC "
                             "(pyramid_mind's instance optimisation)")
    parser.add_argument("--fixed-mask", type=Path, help="fixed-image mask (label file, non-zero = inside)")
    parser.add_argument("--moving-mask", type=Path, help="moving-image mask (label file, non-zero = inside)")
    parser.add_argument("--masks", action="store_true",
                        help="with --dataset: use each scan's mask from the Learn2Reg masksTr/ folder")
    parser.add_argument("--list-methods", action="store_true", help="print the training-free methods and exit")
    parser.add_argument("--clamp", type=float, nargs=2, metavar=("LOW", "HIGH"), help="intensity clamp before scaling")
    parser.add_argument("--shift", type=float, help="added after clamping")
    parser.add_argument("--scale", type=float, help="multiplied after shifting")
    parser.add_argument("--resample-factor", type=float, help="estimate at this resolution factor (e.g. 0.5)")
    parser.add_argument("--fixed-points", type=int,
                        help="point checkpoints: fixed keypoints per scan (default: the training data module's "
                             "fixed_count, else 1000)")
    parser.add_argument("--moving-points", type=int,
                        help="point checkpoints: moving keypoints per scan (default: moving_count, else 2000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class PairJob:
    """The input images of one pair and the files registering it writes."""

    fixed: Path
    moving: Path
    disp: Path
    disp_itk: Path
    warped: Path | None = None
    fixed_mask: Path | None = None
    moving_mask: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.disp, self.disp_itk, self.warped) if p is not None]


class CheckpointEstimator(DisplacementEstimator):
    """A trained method's displacement (``predict_displacement``: its test-time refinement included)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fixed: Tensor, moving: Tensor) -> Tensor:
        return self.model.predict_displacement({"fixed": fixed, "moving": moving})


def check_options(args: argparse.Namespace) -> None:
    """Options that need no file: the output folder, the device and the preprocessing overrides."""
    if args.out is None:
        raise RegframeInputError("--out DIR is required")
    if args.out.is_file() or image_stem(args.out) is not None:
        raise RegframeInputError(f"--out {args.out}: --out is a directory, not a file name")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise RegframeInputError(f"--device {args.device}: not a device ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegframeInputError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RegframeInputError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
    if args.adam is not None and (args.checkpoint is None or args.adam < 0):
        raise RegframeInputError(f"--adam {args.adam}: needs --checkpoint and N >= 0 (a --method sets its own Adam)")
    if args.resample_factor is not None and not (math.isfinite(args.resample_factor) and args.resample_factor > 0):
        raise RegframeInputError(f"--resample-factor {args.resample_factor}: must be > 0 (0.5 = half resolution)")
    if args.clamp is not None and not args.clamp[0] < args.clamp[1]:
        raise RegframeInputError(f"--clamp {args.clamp[0]:g} {args.clamp[1]:g}: LOW must be below HIGH")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale != 0):
        raise RegframeInputError(f"--scale {args.scale}: must be a non-zero number")
    if args.shift is not None and not math.isfinite(args.shift):
        raise RegframeInputError(f"--shift {args.shift}: must be a finite number")
    for option, count in (("--fixed-points", args.fixed_points), ("--moving-points", args.moving_points)):
        if count is not None and count < 1:
            raise RegframeInputError(f"{option} {count}: must be >= 1")


def plan_jobs(args: argparse.Namespace) -> list[PairJob]:
    """The pairs to register and their output files (from FIXED MOVING or ``--dataset``)."""
    if args.dataset is not None:
        if args.fixed or args.moving:
            raise RegframeInputError("give either FIXED MOVING or --dataset, not both")
        if args.fixed_mask or args.moving_mask:
            raise RegframeInputError("with --dataset the masks come from masksTr/: use --masks")
        spec = load_dataset_json(args.dataset)
        jobs = [PairJob(p.fixed.image, p.moving.image, args.out / displacement_name(p),
                        args.out / f"disp_itk_{p.pair_id}.nii.gz",
                        fixed_mask=p.fixed.mask if args.masks else None,
                        moving_mask=p.moving.mask if args.masks else None) for p in spec.registration_val]
        for job, pair in zip(jobs, spec.registration_val):
            for image, mask in ((job.fixed, job.fixed_mask), (job.moving, job.moving_mask)):
                if args.masks and mask is None:
                    raise RegframeInputError(f"{image}: --masks but no mask for it in {spec.root / 'masksTr'}")
        return jobs
    if not (args.fixed and args.moving):
        raise RegframeInputError("give FIXED MOVING images, or --dataset JSON")
    if args.masks:
        raise RegframeInputError("--masks needs --dataset; for one pair give --fixed-mask/--moving-mask")
    return [PairJob(Path(args.fixed), Path(args.moving), args.out / "disp.nii.gz", args.out / "disp_itk.nii.gz",
                    args.out / "warped.nii.gz", args.fixed_mask, args.moving_mask)]


def check_outputs(jobs: list[PairJob], overwrite: bool) -> None:
    """No output replaces an input image, is written twice, or replaces an earlier result silently."""
    inputs = {p.resolve() for job in jobs for p in (job.fixed, job.moving)}
    written: set[Path] = set()
    for job in jobs:
        for path in job.outputs:
            resolved = path.resolve()
            if resolved in inputs:
                raise RegframeInputError(f"{path}: is an input image and would be overwritten; choose another --out")
            if resolved in written:
                raise RegframeInputError(f"{path}: would be written by two pairs (a pair listed twice?)")
            if path.exists() and not overwrite:
                raise RegframeInputError(f"{path}: exists; pass --overwrite to replace it")
            written.add(resolved)


def read_input(path: Path, prep: Preprocessing) -> Volume:
    """Read an input image; an image without contrast after preprocessing is an input error."""
    volume = read_image(path)
    network_input = prep.image(volume.array)
    low, high = float(network_input.min()), float(network_input.max())
    if low == high:
        raise RegframeInputError(f"{path}: image has no contrast after preprocessing (every voxel is {low:g}); "
                                 "check the image and --clamp/--shift/--scale")
    return volume


def read_mask(path: Path, image: Volume) -> Volume:
    """A mask (non-zero = inside) on ``image``'s grid, brought to its axis order; empty masks are an error."""
    mask = reorient_volume(read_label(path), image.affine, image.path)
    if mask.array.shape != image.array.shape or not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise RegframeInputError(f"{path}: mask grid differs from its image {image.path}")
    if not mask.array.any():
        raise RegframeInputError(f"{path}: mask is empty")
    return mask


def check_inputs(jobs: list[PairJob], prep: Preprocessing) -> None:
    """Read every input image once (readable, contrast), its mask if any (grid, not empty), and check
    each pair's grids, before any registration starts."""
    grids = {}
    for job in jobs:
        for image, mask in ((job.fixed, job.fixed_mask), (job.moving, job.moving_mask)):
            if image not in grids:
                volume = read_input(image, prep)
                if mask is not None:
                    read_mask(mask, volume)
                grids[image] = Grid.of(volume)
        check_pair_grid(grids[job.fixed], grids[job.moving])


def load_estimator(args: argparse.Namespace) -> tuple[DisplacementEstimator | KeypointRegistration, Preprocessing]:
    """Build the estimator and its preprocessing from ``--method`` or ``--checkpoint`` (and ``--affine``);
    a point method's checkpoint gives a :class:`~regframe.register_points.KeypointRegistration`."""
    if (args.method is None) == (args.checkpoint is None):
        raise RegframeInputError("give exactly one of --method NAME or --checkpoint CKPT")
    prep = Preprocessing()
    if args.method is not None:
        estimator = build_training_free(args.method)
    else:
        from regframe.features.embedding import PretrainedEmbedding
        from regframe.methods.base import RegistrationModule
        from regframe.methods.points_base import PointRegistrationModule
        from regframe.methods.samconvex import AnatomicalEmbeddingPretraining, samconvex_on_raw_images

        method, ckpt = read_method_checkpoint(args.checkpoint, (RegistrationModule, PointRegistrationModule,
                                                                AnatomicalEmbeddingPretraining))
        if issubclass(method, PointRegistrationModule):
            if args.adam is not None:
                raise RegframeInputError(f"--adam: {args.checkpoint} is a point method; --adam refines image fields")
            check_point_options(args, method)
            point_route = keypoint_registration(rebuild_method(args.checkpoint, method), ckpt,
                                                args.fixed_points, args.moving_points, args.device)
            return point_route, _with_overrides(prep, args)
        if issubclass(method, AnatomicalEmbeddingPretraining):  # SAMConvex on the embedding, raw images in
            estimator = samconvex_on_raw_images(PretrainedEmbedding(str(args.checkpoint)))
        else:
            prep = recorded_preprocessing(args.checkpoint, ckpt)
            estimator = CheckpointEstimator(rebuild_method(args.checkpoint, method))
        if args.adam is not None:
            estimator = mind_refined(estimator, args.adam)
    if args.fixed_points is not None or args.moving_points is not None:
        raise RegframeInputError("--fixed-points/--moving-points: only for a point method's --checkpoint")
    if args.affine:
        estimator = AffinePrealigned(estimator)
    return estimator.to(args.device).eval(), _with_overrides(prep, args)


def _with_overrides(prep: Preprocessing, args: argparse.Namespace) -> Preprocessing:
    """``prep`` with the ``--clamp/--shift/--scale/--resample-factor`` given on the command line."""
    overrides = {name: getattr(args, name) for name in ("clamp", "shift", "scale", "resample_factor")
                 if getattr(args, name) is not None}
    return Preprocessing.from_dict({**prep.to_dict(), **overrides}) if overrides else prep


def read_method_checkpoint(path: Path, bases: tuple[type, ...]) -> tuple[type, dict]:
    """The method class a checkpoint records (a subclass of one of ``bases``; ``bases[0]`` when it
    records none) and the checkpoint dict (read ``weights_only``)."""
    import_plugins()
    ckpt = read_checkpoint(path)
    return _recorded_class(path, ckpt["hyper_parameters"].get("_class_path"), bases), ckpt


def rebuild_method(path: Path, method: type) -> torch.nn.Module:
    """``method`` with the weights of the checkpoint at ``path`` written by ``regframe fit`` (``weights_only=True``)."""
    try:
        return method.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RegframeInputError(f"{path}: cannot rebuild the model ({type(err).__name__}: {err})") from err


def _recorded_class(path: Path, class_path: str | None, bases: tuple[type, ...]) -> type:
    """The method class a checkpoint was trained with (Lightning rebuilds only the class it is
    called on, so the recorded ``class_path`` must be resolved first)."""
    if class_path is None:
        return bases[0]
    module_name, _, name = class_path.rpartition(".")
    try:
        method = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise RegframeInputError(f"{path}: method class {class_path!r} is not importable ({err})") from err
    if not (isinstance(method, type) and issubclass(method, bases)):
        raise RegframeInputError(f"{path}: {class_path} is not a {' or '.join(b.__name__ for b in bases)}")
    return method


def masked_input(volume: Volume, mask: Volume | None, prep: Preprocessing) -> Tensor:
    """The network input ``(1, 1, *S')`` of ``volume``; outside ``mask`` every voxel is set to the
    image's minimum after preprocessing (its background), so nothing there drives the registration."""
    image = prep.image(volume.array)
    if mask is None:
        return image
    inside = F.interpolate(torch.from_numpy(mask.array != 0)[None, None].float(), size=image.shape[2:],
                           mode="nearest-exact") > 0.5
    return torch.where(inside, image, image.min())


def register_pair(estimator: DisplacementEstimator, prep: Preprocessing, fixed: Volume, moving: Volume,
                  device: str, fixed_mask: Volume | None = None,
                  moving_mask: Volume | None = None) -> tuple[Tensor, float]:
    """Estimate the displacement (voxels, fixed grid, ``(D, *S)``) of one pair, ``moving`` (and its
    mask) already in the fixed orientation, and its time in seconds."""
    f = masked_input(fixed, fixed_mask, prep).to(device)
    m = masked_input(moving, moving_mask, prep).to(device)
    start = time.perf_counter()
    with torch.no_grad():
        disp = estimator(f, m)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    disp = resize_field(disp.float(), fixed.array.shape)
    return disp[0].cpu(), seconds


def write_outputs(job: PairJob, disp: Tensor, fixed: Volume, moving: Volume) -> None:
    """The Learn2Reg field, the ITK transform and (single pairs) the warped moving image."""
    write_displacement(job.disp, disp, fixed.affine)
    write_itk_displacement(job.disp_itk, disp, fixed.affine, moving.affine)
    if job.warped is not None:
        moving_t = torch.from_numpy(moving.array)[None, None]
        write_nifti(job.warped, warp(moving_t, disp[None])[0, 0].numpy(), fixed.affine)


def main(args: argparse.Namespace) -> int:
    if args.list_methods:
        print("\n".join(f"{name}  (options: {', '.join(f'{key}=INT' for key in METHOD_OPTIONS[name])})"
                        if name in METHOD_OPTIONS else name for name in sorted(TRAINING_FREE)))
        return 0
    check_options(args)
    jobs = plan_jobs(args)
    check_outputs(jobs, args.overwrite)
    estimator, prep = load_estimator(args)
    if isinstance(estimator, KeypointRegistration):
        require_masks(jobs, args.checkpoint, dataset=args.dataset is not None)
    check_inputs(jobs, prep)
    times = []
    steps = track(jobs, description="registering", console=Console(stderr=True)) if len(jobs) > 1 else jobs
    for job in steps:
        fixed = read_image(job.fixed)
        moving = reorient_volume(read_image(job.moving), fixed.affine, fixed.path)
        fixed_mask = read_mask(job.fixed_mask, fixed) if job.fixed_mask else None
        moving_mask = read_mask(job.moving_mask, moving) if job.moving_mask else None
        if isinstance(estimator, KeypointRegistration):
            disp, seconds = estimator.register(fixed, moving, fixed_mask, moving_mask, prep)
        else:
            disp, seconds = register_pair(estimator, prep, fixed, moving, args.device, fixed_mask, moving_mask)
        write_outputs(job, disp, fixed, moving)
        times.append(seconds)
        print(f"{job.disp.name}: {seconds:.2f} s")
    print(f"{len(times)} pair(s), mean {np.mean(times):.2f} s/pair on {args.device}")
    return 0
