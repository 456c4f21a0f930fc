"""``regframe data``: write or fetch data sets (``regframe data phantom --out DIR``,
``regframe data learn2reg TASK --out DIR``)."""

from __future__ import annotations

import argparse

from regframe.download import LEARN2REG_TASKS, fetch_learn2reg_task
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

    learn2reg = data.add_parser(
        "learn2reg", help="download and unpack a Learn2Reg task into OUT/TASK (resumable; prints the dataset json)")
    learn2reg.add_argument("task", metavar="TASK", help=f"one of: {', '.join(LEARN2REG_TASKS)}")
    learn2reg.add_argument("--out", required=True, help="parent directory; the task lands in OUT/TASK")
    learn2reg.add_argument("--url", help="download from this URL instead of the built-in one (a mirror)")
    learn2reg.add_argument("--sha256", help="expected SHA-256 of the zip (the built-in tasks publish none)")
    learn2reg.add_argument("--overwrite", action="store_true", help="replace an existing OUT/TASK")
    learn2reg.add_argument("--timeout", type=float, default=60.0,
                           help="seconds without data before a connection attempt gives up")


def main(args: argparse.Namespace) -> int:
    if args.dataset == "learn2reg":
        path = fetch_learn2reg_task(args.task, args.out, url=args.url, sha256=args.sha256,
                                    overwrite=args.overwrite, timeout_s=args.timeout)
    else:
        if args.subjects < PHANTOM_VAL_SUBJECTS:
            raise RegframeInputError(f"--subjects {args.subjects}: the phantom needs at least {PHANTOM_VAL_SUBJECTS} "
                                     f"subjects (its validation pairs use the last {PHANTOM_VAL_SUBJECTS})")
        if min(args.shape) < 4:
            raise RegframeInputError(f"--shape {' '.join(map(str, args.shape))}: every size must be at least 4 voxels")
        path = write_phantom_dataset(args.out, subjects=args.subjects, shape=tuple(args.shape), seed=args.seed,
                                     val_subjects=PHANTOM_VAL_SUBJECTS)
    print(path)
    return 0
