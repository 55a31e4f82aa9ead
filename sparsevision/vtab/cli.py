"""`sparsevision vtab`: the VTAB-1k benchmark (or the offline vtab-lite suite) for one pre-trained model."""
from __future__ import annotations

import argparse

from ..cli_args import add_device_argument, add_model_arguments

HELP = "VTAB-1k (19 tasks, local data) or the offline vtab-lite suite: table, JSON and bar plot"

EPILOG = """\
protocol: per task, choices on train800 / val200, final run on the 1000 examples, accuracy on test; group means
and the overall mean (over tasks, as the paper) in a table, <out>/<suite>_<mode>.json and .png.

data (vtab-1k): this command never downloads. Each task is read from DATA_DIR/<task>/{train,val,test}/<class>/
images (train = train800, val = val200, test = the task's test split), as written by
  python -m sparsevision.vtab.export --data-dir DATA_DIR --tasks NAMES
on a machine with internet and tensorflow-datasets. DATA_DIR: --data-dir, else $SPARSEVISION_VTAB_DIR, else
~/.cache/sparsevision/vtab. Missing tasks are listed with how to get them; means are then over the present
tasks and marked partial.

vtab-lite: the built-in generated tasks and scikit-learn digits (natural: digits~svhn, textures~dtd; structured:
dsprites_location, dsprites_orientation, counting~clevr_count, dsprites_shape; no specialized stand-in); runs
anywhere in seconds to minutes.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser)
    parser.add_argument("--suite", default="vtab-1k", choices=("vtab-1k", "vtab-lite"),
                        help="vtab-1k (19 tasks from --data-dir) or vtab-lite (built-in, offline); default vtab-1k")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks (default: all)")
    parser.add_argument("--mode", default="finetune", choices=("finetune", "linear", "fewshot"),
                        help="finetune: all weights, BiT-HyperRule, a fresh copy per task (the VTAB-1k standard; "
                             "default); linear: logistic-regression head on frozen features; fewshot: closed-form "
                             "ridge on frozen features (fastest)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="finetune: multiply the HyperRule schedule (500 steps) by this, for quick runs")
    parser.add_argument("--lr", default="0.003",
                        help="finetune: learning rate, or several separated by commas to choose on val200 "
                             "(default 0.003, BiT-HyperRule)")
    parser.add_argument("--batch-size", type=int, default=512, help="finetune: batch size (default 512, HyperRule)")
    parser.add_argument("--data-dir", default=None, help="VTAB-1k task folders (see below)")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="cap each test set (vtab-lite default 1000; vtab-1k default: the whole split, a "
                             "cap is flagged in the report)")
    add_device_argument(parser)
    parser.add_argument("--out", default=None,
                        help="output directory (default: <run>/vtab for a run directory, else ./vtab)")
    parser.add_argument("--seed", type=int, default=0, help="finetune / linear: seed of the adaptation runs")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..cli_args import default_output_dir, load_model_from_args, positive_numbers, resolve_device
    from .adapt import AdaptSettings
    from .report import bar_plot, format_table, save_json
    from .runner import run_suite

    args.device = resolve_device(args.device)
    if args.test_examples is not None and args.test_examples < 1:  # before the model is read
        raise ValueError(f"--test-examples must be >= 1, got {args.test_examples}")
    settings = AdaptSettings(mode=args.mode, steps_scale=args.steps_scale, lrs=tuple(positive_numbers(args.lr, "--lr")),
                             batch_size=args.batch_size, seed=args.seed)
    device = args.device
    model, name = load_model_from_args(args)
    model.to(device)
    result = run_suite(model, args.suite, tasks=args.tasks, settings=settings, data_dir=args.data_dir,
                       test_examples=args.test_examples, device=device, model_name=name,
                       inner_progress=sys.stderr.isatty())
    print(format_table(result))
    out = Path(args.out) if args.out else default_output_dir(args.model, "vtab")
    stem = f"{args.suite}_{args.mode}"
    json_path, png_path = save_json(result, out / f"{stem}.json"), bar_plot(result, out / f"{stem}.png")
    print(f"wrote {json_path} and {png_path}")
    if not result.tasks:
        hint = " (the offline suite: --suite vtab-lite)" if args.suite == "vtab-1k" else ""
        print(f"sparsevision vtab: no task could run: none of their data is on this machine{hint}", file=sys.stderr)
        return 1
    return 0
