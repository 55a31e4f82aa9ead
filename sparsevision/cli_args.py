"""Arguments several sub-commands share: which model (`--model` / `--weights` / `--set`), where results go, and
comma-separated number lists. Imports only argparse at the top, like the command modules."""
from __future__ import annotations

import argparse

MODEL_HELP = ("run directory, checkpoint directory or .safetensors (from training or `sparsevision convert`), or a "
              "registered model name together with --weights")


def add_model_arguments(parser: argparse.ArgumentParser, overrides: bool = True) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--weights", default=None, help="weights file for a registered model name")
    if overrides:
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="constructor override for a registered model name (repeatable), e.g. "
                                 "--set num_classes=10")


def parse_overrides(items: list[str]) -> dict:
    """{key: value} from KEY=VALUE strings; values are read as JSON when they parse (numbers, lists, true)."""
    import json

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def load_model_from_args(args: argparse.Namespace):
    """(model in eval mode, name) for `add_model_arguments`' options."""
    from .models.loading import load_model

    return load_model(args.model, args.weights, parse_overrides(getattr(args, "set", None) or []))


def default_output_dir(model_spec: str, name: str):
    """`<run>/<name>` when the model is a run directory (results stay with the run), else `./<name>`."""
    import os
    from pathlib import Path

    return Path(model_spec) / name if os.path.isdir(model_spec) else Path(name)


def positive_numbers(text: str, flag: str, kind: type = float) -> list:
    """Comma-separated positive numbers of `kind`, or a ValueError naming `flag`."""
    noun = "integers" if kind is int else "numbers"
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be {noun} separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise ValueError(f"{flag} must be positive {noun}, got {text!r}")
    return values


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N (default: auto)")


def resolve_device(text: str):
    """torch.device for `--device` (see `sparsevision.utils.device.resolve_device`)."""
    from .utils.device import resolve_device as resolve

    return resolve(text, "--device")
