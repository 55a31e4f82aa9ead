"""`sparsevision convert`: official Flax (.npz) or timm (.safetensors / .pth) weights -> a sparsevision
safetensors file for a registered model, optionally upcycling a dense checkpoint into an MoE model."""
from __future__ import annotations

import argparse
import os

HELP = "convert Flax (.npz: vit_jax, big_vision, vmoe) or timm weights into a registered model's safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="source weights: .npz (Flax, '/'-joined names), .safetensors/.pth/.bin (timm), "
                                    "or a sparsevision run directory")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--model", required=True, help="registered model name, e.g. vit_b16, vmoe_b16")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model constructor override (repeatable), e.g. --set num_classes=1000 --set img_size=384")
    parser.add_argument("--from", dest="source", choices=("auto", "flax", "timm", "sparsevision"), default="auto",
                        help="source format (auto: a directory is a sparsevision run, .npz is Flax, other files "
                             "timm; sparsevision: a run, checkpoint or .safetensors of ours, e.g. a dense run to "
                             "--upcycle)")
    parser.add_argument("--upcycle", action="store_true",
                        help="the source is a dense ViT: load it into the model's dense twin, then copy its MLPs "
                             "into every expert (Sparse Upcycling)")
    parser.add_argument("--prefix", default=None, help="Flax sub-tree to load, e.g. 'img' (SigLIP) or 'params'")
    parser.add_argument("--dialect", choices=("vit_jax", "big_vision", "vmoe"), default=None,
                        help="Flax naming (default: detected)")
    parser.add_argument("--non-strict", action="store_true", help="copy what fits instead of failing on a mismatch")


def _source_kind(args) -> str:
    if args.source != "auto":
        return args.source
    if os.path.isdir(args.src):
        return "sparsevision"
    return "flax" if args.src.endswith(".npz") else "timm"


def _is_flax(args) -> bool:
    return _source_kind(args) == "flax"


def _load(args, model, strict: bool):
    from .common import LoadReport
    from .flax import load_flax_params, load_npz
    from .timm import load_timm_weights

    if _source_kind(args) == "sparsevision":
        # Our own run / checkpoint / safetensors, e.g. a dense run to upcycle: names already match.
        from ..train.checkpoint import load_model_weights, resolve_weights

        missing, unexpected = load_model_weights(model, resolve_weights(args.src), strict=strict)
        loaded = [k for k in model.state_dict() if k not in set(missing)]
        return LoadReport("sparsevision", loaded=loaded, missing=missing, unexpected=unexpected)
    if _is_flax(args):
        return load_flax_params(load_npz(args.src), model, strict=strict, dialect=args.dialect, prefix=args.prefix)
    return load_timm_weights(model, args.src, strict=strict)


def run(args: argparse.Namespace) -> int:
    import json

    from ..models import create_model
    from ..train.checkpoint import save_model_weights
    from .upcycle import dense_twin, upcycle_vit_to_moe

    if not os.path.exists(args.src):
        raise FileNotFoundError(f"no source weights at {args.src}")
    from ..cli_args import parse_overrides

    overrides = parse_overrides(args.set)
    if _is_flax(args) and "gelu_approximate" not in overrides:
        # Flax's nn.gelu is the tanh approximation: build the model with it, so the file (whose metadata records
        # the overrides) rebuilds exactly what the checkpoint was trained with.
        overrides["gelu_approximate"] = "tanh"
    model = create_model(args.model, **overrides)
    strict = not args.non_strict
    if args.upcycle:
        dense = dense_twin(model)
        report = _load(args, dense, strict)
        up = upcycle_vit_to_moe(dense, model, strict=strict)
        print(f"upcycled {len(up.loaded)} tensors / expert sets from the dense {report.dialect} checkpoint")
    else:
        report = _load(args, model, strict)
    print(f"loaded {len(report.loaded)} tensors from {args.src} ({report.dialect} naming) into {args.model}")
    for line in report.resampled:
        print(f"  resampled {line}")
    if not report.ok:
        print("not loaded (--non-strict):\n" + report.problems())
    if overrides.get("gelu_approximate") == "tanh":
        print("built with gelu_approximate='tanh' (Flax's GELU); the file's metadata records it")
    # `sparsevision evaluate --model OUT` rebuilds the model from these entries.
    metadata = {"format": "pt", "model": args.model, "overrides": json.dumps(overrides, sort_keys=True),
                "source": os.path.basename(args.src),
                "converter": report.dialect + (" upcycled" if args.upcycle else "")}
    save_model_weights(model, args.out, metadata=metadata)
    print(f"wrote {args.out}")
    return 0
