"""``regframe data``: write or fetch data sets (``regframe data phantom --out DIR``)."""

from __future__ import annotations

import argparse

from regframe.phantom import write_phantom_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_subparsers(dest="dataset", required=True)
    phantom = data.add_parser("phantom", help="write the synthetic abdomen phantom in Learn2Reg layout")
    phantom.add_argument("--out", required=True, help="output directory")
    phantom.add_argument("--subjects", type=int, default=8)
    phantom.add_argument("--shape", type=int, nargs=3, default=(64, 56, 80), metavar=("X", "Y", "Z"))
    phantom.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    path = write_phantom_dataset(args.out, subjects=args.subjects, shape=tuple(args.shape), seed=args.seed)
    print(path)
    return 0
