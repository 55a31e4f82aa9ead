"""`sparsevision models`: list the registered models with parameter counts (and optionally forward FLOPs)."""
from __future__ import annotations

import argparse

HELP = "list registered models (optionally filtered by a glob pattern) with parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'vmoe_*'")
    parser.add_argument("--num-classes", type=int, default=1000, help="head width used for the count")
    parser.add_argument("--flops", action="store_true", help="also count forward GFLOPs per image (runs each model once on the CPU)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..utils.flops import count_flops
    from .registry import create_model, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    print(f"{'model':24s} {'params':>10s}" + (f" {'GFLOPs':>9s}" if args.flops else ""))
    for name in names:
        if args.flops:
            model = create_model(name, num_classes=args.num_classes)
        else:
            with torch.device("meta"):
                model = create_model(name, num_classes=args.num_classes)
        count = sum(p.numel() for p in model.parameters())
        line = f"{name:24s} {count / 1e6:9.2f}M"
        if args.flops:
            line += f" {count_flops(model) / 1e9:9.2f}"
        print(line)
    return 0
