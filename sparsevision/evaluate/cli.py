"""`sparsevision evaluate`: accuracy of a trained MoE classifier at several eval capacity factors (V-MoE Sec. 4),
printed as a table and written as JSON plus a plot."""
from __future__ import annotations

import argparse

from ..cli_args import add_device_argument, add_model_arguments

HELP = "accuracy of a trained MoE model per eval capacity factor (Batch Priority Routing on), with JSON and plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset name, e.g. digits, dsprites_shape, folder:<path>")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the dataset itself")
    parser.add_argument("--capacity-factors", default="0.5,1,1.5",
                        help="comma-separated eval capacity factors (default: 0.5,1,1.5)")
    parser.add_argument("--no-bpr", action="store_true", help="fill buffers in token order instead of by priority")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-examples", type=int, default=None)
    add_device_argument(parser)
    parser.add_argument("--out", default=None,
                        help="output directory (default: <run>/eval for a run directory, else ./eval)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..cli_args import default_output_dir, load_model_from_args, positive_numbers, resolve_device
    from ..data import build_dataset
    from .capacity import _moe_layers, evaluate_capacity_factors, save_capacity_results

    args.device = resolve_device(args.device)
    factors = positive_numbers(args.capacity_factors, "--capacity-factors")
    model, name = load_model_from_args(args)
    if not hasattr(model, "num_classes"):  # checked before any data is built
        raise ValueError(f"{args.model} holds {name}, an image-text model with no classifier head: capacity factors "
                         f"are measured by classification accuracy (for zero-shot accuracy: sparsevision zeroshot)")
    _moe_layers(model)  # a dense model has no capacity factor: say so before building the data
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
    out = Path(args.out) if args.out else default_output_dir(args.model, "eval")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"capacity_{args.data.replace(':', '_').replace('/', '_')}_{args.split}"
    info = dict(model=name, source=args.model, data=args.data, split=args.split, batch_priority=bpr)
    save_capacity_results(results, out / f"{stem}.json", out / f"{stem}.png",
                          title=f"{name}, {args.data}/{args.split}", info=info)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 0
