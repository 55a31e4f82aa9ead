"""The `sparsevision` command line: one sub-command per job, each defined next to the code it drives.

A sub-command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int | None`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module. Every module is imported to build the parser, so command modules import only argparse at the
# top and do their heavy imports inside `run`, which keeps `sparsevision --help` fast.
COMMANDS: dict[str, str] = {
    "train": "sparsevision.train.cli",
    "models": "sparsevision.models.cli",
    "convert": "sparsevision.convert.cli",
    "evaluate": "sparsevision.evaluate.cli",
    "fewshot": "sparsevision.evaluate.fewshot_cli",
    "zeroshot": "sparsevision.evaluate.zeroshot_cli",
    "transfer": "sparsevision.transfer.cli",
    "vtab": "sparsevision.vtab.cli",
    "select": "sparsevision.selection.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsevision",
        description="Sparse mixture-of-experts vision transformers and their transfer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        # User errors are reported in one line; run with SPARSEVISION_DEBUG=1 for the traceback.
        import os

        if os.environ.get("SPARSEVISION_DEBUG"):
            raise
        print(f"sparsevision {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
