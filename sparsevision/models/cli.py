"""`sparsevision models`: list the registered models with parameter counts (and optionally forward FLOPs)."""
from __future__ import annotations

import argparse

HELP = "list registered models (optionally filtered by a glob pattern) with parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names, e.g. 'vmoe_*' (default: all)")
    parser.add_argument("--num-classes", type=int, default=1000, help="head width used for the count (default 1000)")
    parser.add_argument("--flops", action="store_true",
                        help="also count forward GFLOPs per image (builds and runs each model once on the CPU; "
                             "models whose weights do not fit in free memory are skipped)")


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (unknown: nothing is skipped)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.0f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.0f} MiB"


def run(args: argparse.Namespace) -> int:
    import sys

    import torch
    from tqdm import tqdm

    from ..utils.flops import count_flops
    from .registry import create_model, list_models

    if args.num_classes < 0:
        raise ValueError(f"--num-classes must be >= 0, got {args.num_classes}")
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    print(f"{'model':24s} {'params':>10s}" + (f" {'GFLOPs':>9s}" if args.flops else ""))
    free = available_memory_bytes() if args.flops else None
    bar = tqdm(names, desc="FLOPs", unit="model", disable=not (args.flops and sys.stderr.isatty()), leave=False)
    for name in bar:
        with torch.device("meta"):  # the count needs no memory, whatever the size
            count = sum(p.numel() for p in create_model(name, num_classes=args.num_classes).parameters())
        line = f"{name:24s} {count / 1e6:9.2f}M"
        if args.flops:
            # Running the model needs its float32 weights plus activations; the 7B and 13B models would be killed
            # by the kernel's out-of-memory killer with no message, so they are skipped with one.
            need = 4 * count * 1.25
            if free is not None and need > free:
                line += f" {'-':>9s}  (skipped: ~{_size(need)} needed, {_size(free)} free)"
            else:
                line += f" {count_flops(create_model(name, num_classes=args.num_classes)) / 1e9:9.2f}"
        bar.write(line) if args.flops else print(line)
    return 0
