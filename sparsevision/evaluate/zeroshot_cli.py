"""`sparsevision zeroshot`: zero-shot accuracy (and optionally image-text retrieval) of a trained image-text model."""
from __future__ import annotations

import argparse

from ..cli_args import add_device_argument

HELP = "zero-shot classification accuracy (and retrieval recall@k) of a trained CLIP / SigLIP / LIMoE checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="run directory, checkpoint directory or model.safetensors of a contrastive run")
    parser.add_argument("--data", required=True, help="labelled dataset, e.g. digits, dsprites_shape, folder:<path>")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's image size")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--max-examples", type=int, default=None, help="evaluate on the first N examples only")
    parser.add_argument("--template", dest="templates", action="append", default=None, metavar="TEXT",
                        help="prompt template with {} for the class name (repeatable; default: per dataset)")
    parser.add_argument("--retrieval", action="store_true",
                        help="also report image<->text recall@1/5 on the dataset's captions (built-in tasks, "
                             "or pairs:<folder | csv> given with --data)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_device_argument(parser)
    parser.add_argument("--out", default=None, help="JSON file for the results (default: <run>/eval/zeroshot_<data>_"
                                                    "<split>.json for a run directory, else ./eval/...)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..cli_args import default_output_dir, resolve_device
    from ..train.checkpoint import atomic_write_bytes, load_checkpoint_model
    from .zeroshot import evaluate_retrieval, zeroshot_classify

    args.device = resolve_device(args.device)
    model, config = load_checkpoint_model(args.model, device=args.device)
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{args.model} holds a {config.model.name!r} model, not an image-text model")
    image_size = args.image_size or model.patch_embed.img_size[0]
    result: dict = {"model": str(args.model), "data": args.data, "split": args.split, "image_size": image_size}
    if args.data.startswith(("pairs:", "wds:")):
        if not args.retrieval:
            raise ValueError(f"{args.data} holds unlabelled image-caption pairs: use --retrieval")
    else:
        from ..data.captions import CaptionDataset

        dataset = CaptionDataset(args.data, split=args.split, image_size=image_size, seed=args.seed)
        result.update(zeroshot_classify(model, dataset, templates=args.templates, batch_size=args.batch_size,
                                        max_examples=args.max_examples))
        print(f"zero-shot accuracy on {args.data} [{args.split}]: {result['accuracy']:.4f} "
              f"(chance {result['chance']:.4f}, {result['num_examples']} examples, {result['num_classes']} classes)")
    if args.retrieval:
        from ..data.captions import build_caption_dataset

        pairs = build_caption_dataset(args.data, split=None if args.data.startswith("pairs:") else args.split,
                                      image_size=image_size, seed=args.seed)
        recall = evaluate_retrieval(model, pairs, batch_size=args.batch_size,
                                    max_examples=args.max_examples or 1000)
        result["retrieval"] = recall
        print("retrieval: " + " ".join(f"{k} {v:.4f}" for k, v in recall.items() if k != "num_pairs"))
    # With the run, like `fewshot` and `evaluate`; not inside checkpoints/step_*/, which a resumed run deletes.
    out = Path(args.out) if args.out else default_output_dir(args.model, "eval") / (
        f"zeroshot_{args.data.replace('/', '_').replace(':', '_')}_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(result, indent=2).encode())
    print(f"wrote {out}")
    return 0
