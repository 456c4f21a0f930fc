"""Dispatch of the non-training subcommands: ``register``, ``evaluate`` and ``data``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from regframe.errors import RegframeInputError


def build_parser() -> argparse.ArgumentParser:
    from regframe import evaluate, register

    parser = argparse.ArgumentParser(prog="regframe", description="regframe tools (training: regframe fit --config ...)")
    sub = parser.add_subparsers(dest="tool", required=True)
    register.add_arguments(sub.add_parser("register", help="register image pairs with a method or checkpoint"))
    evaluate.add_arguments(sub.add_parser("evaluate", help="Learn2Reg metrics of displacement files"))
    data = sub.add_parser("data", help="built-in data sets").add_subparsers(dest="dataset", required=True)
    phantom = data.add_parser("phantom", help="write the synthetic abdomen phantom in Learn2Reg layout")
    phantom.add_argument("--out", required=True, help="output directory")
    phantom.add_argument("--subjects", type=int, default=8)
    phantom.add_argument("--shape", type=int, nargs=3, default=(64, 56, 80), metavar=("X", "Y", "Z"))
    phantom.add_argument("--seed", type=int, default=0)
    return parser


def run_tool(argv: Sequence[str]) -> int:
    """Run one tool; bad input ends with a one-line error naming the file or option (exit 2)."""
    args = build_parser().parse_args(argv)
    try:
        if args.tool == "register":
            from regframe.register import main
        elif args.tool == "evaluate":
            from regframe.evaluate import main
        else:
            from regframe.phantom import write_phantom_dataset

            path = write_phantom_dataset(args.out, subjects=args.subjects, shape=tuple(args.shape), seed=args.seed)
            print(path)
            return 0
        return main(args)
    except RegframeInputError as err:
        print(f"regframe {args.tool}: error: {err}", file=sys.stderr)
        return 2
