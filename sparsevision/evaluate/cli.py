"""`sparsevision evaluate`: accuracy of a trained MoE classifier at several eval capacity factors (V-MoE Sec. 4),
printed as a table and written as JSON plus a plot."""
from __future__ import annotations

import argparse

HELP = "accuracy of a trained MoE model per eval capacity factor (Batch Priority Routing on), with JSON and plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="run directory, checkpoint directory or .safetensors (from training or "
                             "`sparsevision convert`), or a registered model name together with --weights")
    parser.add_argument("--weights", default=None, help="weights file for a registered model name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor override for a registered model name (repeatable)")
    parser.add_argument("--data", required=True, help="dataset name, e.g. digits, dsprites_shape, folder:<path>")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the dataset itself")
    parser.add_argument("--capacity-factors", default="0.5,1,1.5",
                        help="comma-separated eval capacity factors (default: 0.5,1,1.5)")
    parser.add_argument("--no-bpr", action="store_true", help="fill buffers in token order instead of by priority")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None,
                        help="output directory (default: <run>/eval for a run directory, else ./eval)")


def parse_factors(text: str) -> list[float]:
    try:
        factors = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--capacity-factors must be numbers separated by commas, got {text!r}") from None
    if not factors or any(not f > 0 for f in factors):
        raise ValueError(f"--capacity-factors must be positive numbers, got {text!r}")
    return factors


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..convert.cli import parse_overrides
    from ..data import build_dataset
    from ..models.loading import load_model
    from .capacity import evaluate_capacity_factors, save_capacity_results

    factors = parse_factors(args.capacity_factors)
    model, name = load_model(args.model, args.weights, parse_overrides(args.set))
    model.to(args.device)
    image_size = model.patch_embed.img_size[0]
    dataset = build_dataset(args.data, split=args.split, image_size=image_size, seed=args.data_seed)
    if dataset.num_classes != model.num_classes:
        raise ValueError(f"{args.data} has {dataset.num_classes} classes but the model's head has "
                         f"{model.num_classes}")
    bpr = not args.no_bpr
    results = evaluate_capacity_factors(model, dataset, factors, batch_size=args.batch_size, batch_priority=bpr,
                                        max_examples=args.max_examples, device=args.device)
    print(f"{name} on {args.data}/{args.split} ({results[0].num_examples} examples, BPR {'on' if bpr else 'off'})")
    print(f"{'capacity':>9s} {'accuracy':>9s} {'dropped':>9s}")
    for r in results:
        print(f"{r.capacity_factor:9.3g} {100 * r.accuracy:8.2f}% {100 * r.dropped_fraction:8.2f}%")
    if args.out:
        out = Path(args.out)
    elif os.path.isdir(args.model):
        out = Path(args.model) / "eval"
    else:
        out = Path("eval")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"capacity_{args.data.replace(':', '_').replace('/', '_')}_{args.split}"
    info = dict(model=name, source=args.model, data=args.data, split=args.split, batch_priority=bpr)
    save_capacity_results(results, out / f"{stem}.json", out / f"{stem}.png",
                          title=f"{name}, {args.data}/{args.split}", info=info)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0
