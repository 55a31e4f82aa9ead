"""`sparsevision train`: train a preset, with `--set key=value` overrides, into a run directory; `--resume` it.

Data / expert parallel on several GPUs or nodes: `torchrun --nproc-per-node 8 -m sparsevision.cli train
--distributed --preset ... --out DIR` (docs/scaling.md).
"""
from __future__ import annotations

import argparse

HELP = "train a model from a named preset (with --set overrides) into a run directory, or resume one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="named configuration (see --list-presets)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<preset>-<date>-<time>)")
    parser.add_argument("--steps", type=int, default=None, help="shortcut for --set steps=N")
    parser.add_argument("--device", default=None, help="shortcut for --set device=... (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. optim.lr=3e-4 data.batch_size=128 "
                             "model.overrides.num_experts=4 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest checkpoint, with its saved config")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="checkpoint and exit after this step (resume later with --resume)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--list-presets", action="store_true", help="list the preset names and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group(
        "data / expert parallel (launch with torchrun; see docs/scaling.md)",
        "data.batch_size stays the global batch; rank 0 writes the run directory; checkpoints load on any number "
        "of ranks. These flags describe this launch only: a --resume takes them from its own command line.")
    group.add_argument("--distributed", action="store_true",
                       help="train on the processes torchrun started (reads RANK, WORLD_SIZE, LOCAL_RANK): DDP for "
                            "dense parameters, MoE experts sharded across ranks")
    group.add_argument("--backend", choices=("auto", "nccl", "gloo"), default=None,
                       help="process-group backend (default auto: nccl on CUDA, gloo on CPU)")
    group.add_argument("--ep-size", type=int, default=None, metavar="P",
                       help="ranks sharing one copy of the experts (default: gcd(world size, experts))")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="a collective waiting longer for a crashed or hung rank fails (default 600)")


def _resolve_config(args: argparse.Namespace):
    import dataclasses
    import time
    from pathlib import Path

    from .config import DistributedConfig, apply_overrides, load_config, validate
    from .presets import get_preset

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        saved = Path(args.out) / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} does not exist; is {args.out} a run directory?")
        config = load_config(saved)
    else:
        config = get_preset(args.preset)
    flags = {"--backend": ("backend", args.backend), "--ep-size": ("ep_size", args.ep_size),
             "--timeout": ("timeout_s", args.timeout)}
    launch = {field: value for field, value in flags.values() if value is not None}
    if launch and not args.distributed:
        given = [flag for flag, (_, value) in flags.items() if value is not None]
        raise ValueError(f"{', '.join(given)}: only with --distributed")
    if args.distributed and not (args.out or config.out_dir):
        raise ValueError("--distributed needs --out DIR: every rank must name the same run directory")
    # The launch layout belongs to this invocation, not to the run: a resumed run does not inherit it.
    config = dataclasses.replace(config, distributed=DistributedConfig(enabled=args.distributed, **launch))
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    config = apply_overrides(config, overrides)
    out = args.out or config.out_dir or f"runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return validate(dataclasses.replace(config, out_dir=str(out)))


def run(args: argparse.Namespace) -> int:
    import json

    from .config import config_to_dict
    from .presets import get_preset, list_presets

    if args.list_presets:
        for name in list_presets():
            config = get_preset(name)
            print(f"{name:20s} {config.model.name} on {config.data.dataset}, {config.steps} steps")
        return 0
    config = _resolve_config(args)
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return 0

    from .loop import train

    result = train(config, resume=args.resume, stop_after=args.stop_after,
                   progress=False if args.no_progress else None)
    if result.rank == 0:
        summary = {"run_dir": str(result.run_dir), "step": result.step, "val": result.val, "test": result.test}
        print(json.dumps(summary))
    return 0
