"""Dispatch of the non-training subcommands (``regframe register``, ``evaluate``, ``data``, ...).

Each tool is a module with ``add_arguments(parser)`` and ``main(args) -> exit code``; add a tool by
adding one line to ``TOOLS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from regframe.errors import RegframeInputError

TOOLS: dict[str, tuple[str, str]] = {  # name -> (module, one-line help)
    "register": ("regframe.register", "register image pairs with a method or checkpoint"),
    "evaluate": ("regframe.evaluate", "Learn2Reg metrics of displacement files"),
    "data": ("regframe.data_commands", "built-in and downloadable data sets"),
    "apply": ("regframe.apply", "warp images, label maps or points with a saved displacement"),
    "compare": ("regframe.compare", "offline report comparing runs (Dice per organ, curves, Wilcoxon)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regframe", description="regframe tools (training: regframe fit --config ...)")
    sub = parser.add_subparsers(dest="tool", required=True)
    for name, (module, help_text) in TOOLS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text))
    return parser


def run_tool(argv: Sequence[str]) -> int:
    """Run one tool; bad input ends with a one-line error naming the file or option (exit 2)."""
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(TOOLS[args.tool][0]).main(args)
    except RegframeInputError as err:
        print(f"regframe {args.tool}: error: {err}", file=sys.stderr)
        return 2
