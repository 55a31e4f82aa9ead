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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """States every option's default in --help ("(default: X)") unless its help already speaks of a default;
    descriptions and epilogs are printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not _has_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)".strip()


def _has_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (default is None or isinstance(default, bool)
                                                or default is argparse.SUPPRESS or default == [])


def _document_defaults(parser: argparse.ArgumentParser) -> None:
    """Use `HelpFormatter`, and give options declared without help one stating their default (argparse prints
    nothing at all for an option without help)."""
    if issubclass(HelpFormatter, parser.formatter_class):  # a command may ask for raw descriptions: ours keeps them
        parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if action.help is None and _has_default(action):
            action.help = "(default: %(default)s)"


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
        _document_defaults(sub)
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
