"""`sparsevision models`: list the registered models with their parameter counts."""
from __future__ import annotations

import argparse

HELP = "list registered models (optionally filtered by a glob pattern) with parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'vmoe_*'")
    parser.add_argument("--num-classes", type=int, default=1000, help="head width used for the count")


def run(args: argparse.Namespace) -> int:
    import torch

    from .registry import create_model, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    for name in names:
        with torch.device("meta"):
            model = create_model(name, num_classes=args.num_classes)
        count = sum(p.numel() for p in model.parameters())
        print(f"{name:24s} {count / 1e6:9.2f}M")
    return 0
