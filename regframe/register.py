"""``regframe register``: apply a training-free method or a trained checkpoint to image pairs.

Writes Learn2Reg displacement files (channel-last, voxels, on the fixed grid with its affine)
and the warped moving image, and prints the time per pair.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from regframe.checkpoint import read_checkpoint, recorded_preprocessing
from regframe.errors import RegframeInputError
from regframe.plugins import import_plugins
from regframe.estimators.registry import TRAINING_FREE, build_training_free
from regframe.evaluate import displacement_name
from regframe.io import Volume, read_image, write_displacement, write_nifti
from regframe.learn2reg import load_dataset_json
from regframe.preprocess import Preprocessing
from regframe.spatial import resize_field, warp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", nargs="?", help="fixed image (.nii, .nii.gz, .nrrd, .mha/.mhd)")
    parser.add_argument("moving", nargs="?", help="moving image, on the fixed image's grid")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--dataset", type=Path, help="{Task}_dataset.json: register every registration_val pair")
    parser.add_argument("--method", help="training-free method name (see --list-methods)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint of a trained regframe method")
    parser.add_argument("--list-methods", action="store_true", help="print the training-free methods and exit")
    parser.add_argument("--clamp", type=float, nargs=2, metavar=("LOW", "HIGH"), help="intensity clamp before scaling")
    parser.add_argument("--shift", type=float, help="added after clamping")
    parser.add_argument("--scale", type=float, help="multiplied after shifting")
    parser.add_argument("--resample-factor", type=float, help="estimate at this resolution factor (e.g. 0.5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def load_estimator(args: argparse.Namespace) -> tuple[Callable[[Tensor, Tensor], Tensor], Preprocessing]:
    """Build the displacement function and its preprocessing from ``--method`` or ``--checkpoint``."""
    if (args.method is None) == (args.checkpoint is None):
        raise RegframeInputError("give exactly one of --method NAME or --checkpoint CKPT")
    prep = Preprocessing()
    if args.method is not None:
        estimator = build_training_free(args.method).to(args.device).eval()
        run = lambda fixed, moving: estimator(fixed, moving)  # noqa: E731
    else:
        from regframe.methods.base import RegistrationModule

        model, prep = load_checkpoint(args.checkpoint, RegistrationModule)
        model = model.to(args.device).eval()
        run = lambda fixed, moving: model.predict_displacement({"fixed": fixed, "moving": moving})  # noqa: E731
    overrides = {name: getattr(args, name) for name in ("clamp", "shift", "scale", "resample_factor")
                 if getattr(args, name) is not None}
    if overrides:
        prep = Preprocessing.from_dict({**prep.to_dict(), **overrides})
    return run, prep


def load_checkpoint(path: Path, base: type) -> tuple[torch.nn.Module, Preprocessing]:
    """Load a regframe method from a checkpoint written by ``regframe fit`` (``weights_only=True``),
    with the preprocessing its data module applied (``checkpoint["preprocessing"]``)."""
    import_plugins()
    ckpt = read_checkpoint(path)
    preprocessing = recorded_preprocessing(path, ckpt)
    method = _recorded_class(path, ckpt["hyper_parameters"].get("_class_path"), base)
    try:
        model = method.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RegframeInputError(f"{path}: cannot rebuild the model ({type(err).__name__}: {err})") from err
    return model, preprocessing


def _recorded_class(path: Path, class_path: str | None, base: type) -> type:
    """The method class a checkpoint was trained with (Lightning rebuilds only the class it is
    called on, so the recorded ``class_path`` must be resolved first)."""
    if class_path is None:
        return base
    module_name, _, name = class_path.rpartition(".")
    try:
        method = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise RegframeInputError(f"{path}: method class {class_path!r} is not importable ({err})") from err
    if not (isinstance(method, type) and issubclass(method, base)):
        raise RegframeInputError(f"{path}: {class_path} is not a {base.__name__}")
    return method


def register_pair(run: Callable[[Tensor, Tensor], Tensor], prep: Preprocessing, fixed: Volume, moving: Volume,
                  device: str) -> tuple[Tensor, float]:
    """Estimate the displacement (voxels, fixed grid, ``(D, *S)``) of one pair and its time in seconds."""
    if fixed.array.shape != moving.array.shape:
        raise RegframeInputError(
            f"{moving.path}: shape {moving.array.shape} differs from fixed {fixed.path} shape {fixed.array.shape}; "
            "resample both to one grid first")
    if not np.allclose(fixed.spacing, moving.spacing, rtol=1e-3):
        raise RegframeInputError(f"{moving.path}: spacing {moving.spacing} differs from fixed {fixed.path} spacing {fixed.spacing}")
    f, m = prep.image(fixed.array).to(device), prep.image(moving.array).to(device)
    start = time.perf_counter()
    with torch.no_grad():
        disp = run(f, m)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    disp = resize_field(disp.float(), fixed.array.shape)
    return disp[0].cpu(), seconds


def write_outputs(out_dir: Path, name: str, disp: Tensor, fixed: Volume, moving: Volume, warped_name: str | None) -> None:
    write_displacement(out_dir / name, disp, fixed.affine)
    if warped_name is not None:
        moving_t = torch.from_numpy(moving.array)[None, None]
        write_nifti(out_dir / warped_name, warp(moving_t, disp[None])[0, 0].numpy(), fixed.affine)


def main(args: argparse.Namespace) -> int:
    if args.list_methods:
        print("\n".join(sorted(TRAINING_FREE)))
        return 0
    if args.out is None:
        raise RegframeInputError("--out DIR is required")
    run, prep = load_estimator(args)
    if args.dataset is not None:
        if args.fixed or args.moving:
            raise RegframeInputError("give either FIXED MOVING or --dataset, not both")
        spec = load_dataset_json(args.dataset)
        pairs = [(p.fixed.image, p.moving.image, displacement_name(p)) for p in spec.registration_val]
        warped_names: list[str | None] = [None] * len(pairs)
    else:
        if not (args.fixed and args.moving):
            raise RegframeInputError("give FIXED MOVING images, or --dataset JSON")
        pairs = [(Path(args.fixed), Path(args.moving), "disp.nii.gz")]
        warped_names = ["warped.nii.gz"]
    times = []
    for (fixed_path, moving_path, name), warped_name in zip(pairs, warped_names):
        fixed, moving = read_image(fixed_path), read_image(moving_path)
        disp, seconds = register_pair(run, prep, fixed, moving, args.device)
        write_outputs(args.out, name, disp, fixed, moving, warped_name)
        times.append(seconds)
        print(f"{name}: {seconds:.2f} s")
    print(f"{len(times)} pair(s), mean {np.mean(times):.2f} s/pair on {args.device}")
    return 0
