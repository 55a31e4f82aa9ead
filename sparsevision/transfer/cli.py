"""`sparsevision transfer`: fine-tune a trained or converted model on a task with the BiT-HyperRule (or fit a linear
probe on its frozen features), choose on `val`, report `test`.

The output directory holds
    transfer.json     the recipe as run, val / test accuracy, the test calibration report, the learning history
    model.safetensors the transferred weights, with config.json beside them: `load_model(OUT)` rebuilds the model
    config.json       (a training-run config naming the model, its new num_classes and img_size)
    curves.png        learning curve (train loss, val accuracy), reliability.png: test reliability diagram
"""
from __future__ import annotations

import argparse

from ..cli_args import add_model_arguments

HELP = "fine-tune (BiT-HyperRule) or linearly probe a trained model on a task; JSON, weights and plots"

TRANSFER_FILE = "transfer.json"
CURVES_FILE = "curves.png"
RELIABILITY_FILE = "reliability.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, overrides=False)
    parser.add_argument("--data", required=True, help="task: dataset name, e.g. digits, dsprites_shape, folder:<path>")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the dataset itself")
    parser.add_argument("--mode", default="finetune",
                        help="finetune (all weights, default) or linear (frozen features, head only)")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None,
                       help="total steps; warmup and lr boundaries scale with it (default: the rule's 500/10k/20k)")
    steps.add_argument("--steps-scale", type=float, default=1.0,
                       help="multiply the rule's schedule by this (e.g. 0.1 for a quick run)")
    parser.add_argument("--resolution", default="model",
                        help="model (default: the model's own input size), hyperrule (BiT: 128 px crops for "
                             "images under 96x96, else 480), or an int")
    parser.add_argument("--data-size", type=int, default=32,
                        help="side in px of the task's original images, for --resolution hyperrule (default 32: "
                             "the built-in tasks are 32 px tasks)")
    parser.add_argument("--batch-size", type=int, default=512, help="examples per step (BiT: 512)")
    parser.add_argument("--accum-steps", type=int, default=1, help="micro-batches per step (memory)")
    parser.add_argument("--lr", type=float, default=0.003, help="base learning rate (BiT: 0.003)")
    parser.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                        help="random left-right flips (auto: off for digits and dsprites positions / angles)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="use only the first N training examples (e.g. 1000 for a VTAB-1k-like run)")
    parser.add_argument("--eval-every", type=int, default=0, help="validation accuracy every N steps (0: at the end)")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order, crops, MixUp and dropout")
    parser.add_argument("--out", default=None,
                        help="output directory (default: <run>/transfer/<task>-<mode> for a run directory, "
                             "else ./transfer/<task>-<mode>)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing transfer.json in --out")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="tqdm progress bars (auto: when stderr is a terminal)")


def parse_resolution(text: str) -> str | int:
    if text in ("model", "hyperrule"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--resolution must be 'model', 'hyperrule' or an int, got {text!r}") from None
    if value < 4:
        raise ValueError(f"--resolution must be >= 4 px, got {value}")
    return value


def _progress(choice: str) -> bool:
    import sys

    return sys.stderr.isatty() if choice == "auto" else choice == "on"


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from torch.utils.data import Subset

    from ..cli_args import default_output_dir
    from ..data import build_dataset
    from ..evaluate import calibration_report, reliability_diagram
    from ..models.loading import load_model_and_overrides
    from ..train.checkpoint import CONFIG_FILE, MODEL_FILE, atomic_write_bytes, save_model_weights
    from ..train.config import DataConfig, ModelConfig, TrainConfig, config_to_dict
    from ..train.plots import plot_metrics
    from .features import model_image_size
    from .finetune import MODES, finetune, head_classes, predict_logits, replace_head
    from .hyperrule import default_flip, hyperrule, resize_for_crop, schedule_for

    if args.mode not in MODES:
        raise ValueError(f"unknown --mode {args.mode!r}; expected one of {', '.join(MODES)}")
    resolution = parse_resolution(args.resolution)
    for flag in ("batch_size", "accum_steps", "eval_batch_size", "data_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.max_train_examples is not None and args.max_train_examples < 1:
        raise ValueError(f"--max-train-examples must be >= 1, got {args.max_train_examples}")
    slug = f"{args.data.replace(':', '_').replace('/', '_')}-{args.mode}"
    out = Path(args.out) if args.out else default_output_dir(args.model, "transfer") / slug
    if (out / TRANSFER_FILE).exists() and not args.force:
        raise ValueError(f"{out / TRANSFER_FILE} exists; pass --force to overwrite it or choose another --out")

    model, name, overrides = load_model_and_overrides(args.model, args.weights)
    head_classes(model)  # a head-less (image-text) model is refused here, before any data is built
    progress = _progress(args.progress)

    # The recipe depends on the training-set size, and the datasets on the recipe's resolution.
    size_probe = build_dataset(args.data, split="train", image_size=model_image_size(model), seed=args.data_seed)
    num_train = len(size_probe) if args.max_train_examples is None else min(len(size_probe), args.max_train_examples)
    steps_scale = args.steps / schedule_for(num_train)[2] if args.steps is not None else args.steps_scale
    flip = default_flip(args.data) if args.flip == "auto" else args.flip == "on"
    config = hyperrule(num_train, args.data_size ** 2, batch_size=args.batch_size, lr=args.lr,
                       steps_scale=steps_scale, resolution=resolution, flip=flip, seed=args.seed,
                       accum_steps=args.accum_steps, eval_every=args.eval_every, precision=args.precision)
    crop = config.crop or model_image_size(model)
    config = config.replace(crop=crop, resize=config.resize or resize_for_crop(crop))

    def dataset(split: str, size: int):
        return build_dataset(args.data, split=split, image_size=size, seed=args.data_seed)

    train_ds = size_probe if config.resize == model_image_size(model) else dataset("train", config.resize)
    if args.max_train_examples is not None and args.max_train_examples < len(train_ds):
        num_classes = train_ds.num_classes
        train_ds = Subset(train_ds, range(args.max_train_examples))
        train_ds.num_classes = num_classes
    val_ds, test_ds = dataset("val", crop), dataset("test", crop)
    num_classes = test_ds.num_classes
    replace_head(model, num_classes)
    if args.mode == "linear":  # no steps, batches, MixUp or flips: features once, then full-batch L-BFGS
        print(f"transfer {name} -> {args.data} (linear): {num_train} train examples, features at {config.crop} px, "
              f"logistic-regression head with L2 chosen on val")
    else:
        print(f"transfer {name} -> {args.data} ({args.mode}): {num_train} train examples, {config.steps} steps, "
              f"crop {config.crop} (resize {config.resize}), batch {config.batch_size}, MixUp {config.mixup_alpha}, "
              f"flip {'on' if config.flip else 'off'}")
    result = finetune(model, train_ds, val_ds, num_classes=num_classes, config=config, mode=args.mode,
                      device=args.device, progress=progress, eval_batch_size=args.eval_batch_size)
    logits, labels = predict_logits(result.model, test_ds, batch_size=args.eval_batch_size, progress=progress)
    calibration = calibration_report(logits.numpy(), labels.numpy(), inputs="logits")
    test_accuracy = calibration["accuracy"]

    out.mkdir(parents=True, exist_ok=True)
    new_overrides = {**overrides, "num_classes": num_classes, "img_size": result.img_size}
    run_config = TrainConfig(model=ModelConfig(name=name, overrides=new_overrides),
                             data=DataConfig(dataset=args.data, image_size=result.img_size, seed=args.data_seed),
                             steps=result.config.steps, seed=args.seed, out_dir=str(out))
    save_model_weights(result.model, out / MODEL_FILE,
                       metadata={"format": "pt", "model": name, "overrides": json.dumps(new_overrides)})
    atomic_write_bytes(out / CONFIG_FILE, json.dumps(config_to_dict(run_config), indent=2).encode())
    history = result.history + [{"step": result.config.steps, "split": "test", "accuracy": test_accuracy,
                                 "loss": calibration["nll"]}]
    title = f"{name} -> {args.data} ({args.mode})"
    plot_metrics(history, out / CURVES_FILE, title=title)
    reliability_diagram(logits.numpy(), labels.numpy(), out / RELIABILITY_FILE, title=f"{title}, test",
                        inputs="logits")
    report = {
        "model": name, "source": args.model, "task": args.data, "data_seed": args.data_seed, "mode": args.mode,
        "num_classes": num_classes, "num_train_examples": num_train, "img_size": result.img_size,
        "config": result.config.to_dict(), "val_accuracy": result.val_accuracy, "test_accuracy": test_accuracy,
        "test_calibration": calibration, "linear_l2": result.linear_l2, "linear_search": result.linear_search,
        "seconds": result.seconds, "history": history,
        "files": {"weights": MODEL_FILE, "config": CONFIG_FILE, "curves": CURVES_FILE,
                  "reliability": RELIABILITY_FILE},
    }
    atomic_write_bytes(out / TRANSFER_FILE, json.dumps(report, indent=2).encode())

    val = "-" if result.val_accuracy is None else f"{100 * result.val_accuracy:.2f}%"
    print(f"{'mode':10s} {'steps':>6s} {'res':>4s} {'val acc':>8s} {'test acc':>9s} {'ECE':>6s} {'NLL':>7s}")
    steps = "-" if args.mode == "linear" else str(result.config.steps)
    print(f"{args.mode:10s} {steps:>6s} {result.img_size:4d} {val:>8s} {100 * test_accuracy:8.2f}% "
          f"{calibration['ece']:6.3f} {calibration['nll']:7.4f}")
    print(f"wrote {out} ({TRANSFER_FILE}, {MODEL_FILE}, {CURVES_FILE}, {RELIABILITY_FILE})")
    return 0
