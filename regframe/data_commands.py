"""``regframe data``: write or fetch data sets (``regframe data phantom --out DIR``)."""

from __future__ import annotations

import argparse

from regframe.errors import RegframeInputError
from regframe.phantom import write_phantom_dataset

PHANTOM_VAL_SUBJECTS = 3  # registration_val: all pairs among the last 3 subjects


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_subparsers(dest="dataset", required=True)
    phantom = data.add_parser("phantom", help="write the synthetic abdomen phantom in Learn2Reg layout")
    phantom.add_argument("--out", required=True, help="output directory")
    phantom.add_argument("--subjects", type=int, default=8,
                         help=f"number of subjects (at least {PHANTOM_VAL_SUBJECTS}: the last "
                              f"{PHANTOM_VAL_SUBJECTS} form the validation pairs)")
    phantom.add_argument("--shape", type=int, nargs=3, default=(64, 56, 80), metavar=("X", "Y", "Z"))
    phantom.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    if args.subjects < PHANTOM_VAL_SUBJECTS:
        raise RegframeInputError(f"--subjects {args.subjects}: the phantom needs at least {PHANTOM_VAL_SUBJECTS} "
                                 f"subjects (its validation pairs use the last {PHANTOM_VAL_SUBJECTS})")
    if min(args.shape) < 4:
        raise RegframeInputError(f"--shape {' '.join(map(str, args.shape))}: every size must be at least 4 voxels")
    path = write_phantom_dataset(args.out, subjects=args.subjects, shape=tuple(args.shape), seed=args.seed,
                                 val_subjects=PHANTOM_VAL_SUBJECTS)
    print(path)
    return 0
