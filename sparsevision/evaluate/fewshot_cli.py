"""`sparsevision fewshot`: few-shot linear evaluation (V-MoE / big_vision ridge) and kNN accuracy of a model's
frozen features on one or more tasks, printed as a table and written as JSON plus a plot."""
from __future__ import annotations

import argparse

from ..cli_args import add_device_argument, add_model_arguments

HELP = "few-shot ridge (1/5/10/25 shots, V-MoE recipe) and kNN accuracy of frozen features; table, JSON, plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True,
                        help="comma-separated tasks, e.g. digits,textures,dsprites_location (or folder:<path>)")
    parser.add_argument("--shots", default="1,5,10,25", help="comma-separated shots per class (default: 1,5,10,25)")
    parser.add_argument("--l2-selection", choices=("holdout", "test", "mean-rank"), default="holdout",
                        help="holdout: per task on train examples never drawn as shots (default); test: best test "
                             "accuracy per task (optimistic); mean-rank: V-MoE's one l2 per shot count shared by "
                             "all tasks, by mean test-accuracy rank")
    parser.add_argument("--knn-k", type=int, default=20,
                        help="neighbours for the kNN accuracy (default 20; 0: skip kNN)")
    parser.add_argument("--knn-metric", choices=("cosine", "l2"), default="cosine", help="default: cosine")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled shots (default 0)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the dataset itself (default 0)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="cap on the train pool the shots are drawn from (default: the whole train split)")
    parser.add_argument("--max-test-examples", type=int, default=None,
                        help="first N test examples (default: the whole test split)")
    parser.add_argument("--batch-size", type=int, default=128, help="feature extraction batch (default 128)")
    add_device_argument(parser)
    parser.add_argument("--out", default=None,
                        help="output directory (default: <run>/eval for a run directory, else ./eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def evaluate_task(model, task: str, shots: list[int], args) -> dict:
    """Few-shot results per shot count and kNN accuracy of one task (a JSON-ready dict)."""
    from ..data import build_dataset
    from ..transfer.features import extract_features, model_image_size
    from .fewshot import fewshot_eval
    from .knn import knn_accuracy

    size = model_image_size(model)
    progress = not args.no_progress
    train_set = build_dataset(task, split="train", image_size=size, seed=args.data_seed)
    test_set = build_dataset(task, split="test", image_size=size, seed=args.data_seed)
    train_x, train_y = extract_features(model, train_set, batch_size=args.batch_size,
                                        max_examples=args.max_train_examples, device=args.device,
                                        progress=progress, desc=f"{task} train")
    test_x, test_y = extract_features(model, test_set, batch_size=args.batch_size,
                                      max_examples=args.max_test_examples, device=args.device, progress=progress,
                                      desc=f"{task} test")
    selection = "test" if args.l2_selection in ("test", "mean-rank") else "holdout"
    fewshot = fewshot_eval(train_x.numpy(), train_y.numpy(), test_x.numpy(), test_y.numpy(), shots=shots,
                           seed=args.seed, num_classes=train_set.num_classes, l2_selection=selection)
    result = {"task": task, "num_classes": train_set.num_classes, "num_train_pool": len(train_y),
              "num_test": len(test_y), "fewshot": {str(k): v for k, v in fewshot.items()}}
    if args.knn_k > 0:
        result["knn"] = {"k": args.knn_k, "metric": args.knn_metric,
                         "accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k=args.knn_k,
                                                  metric=args.knn_metric)}
    return result


def apply_mean_rank(results: list[dict]) -> dict[int, float]:
    """Re-read every task's accuracy at V-MoE's shared l2 per shot count (best mean test-accuracy rank)."""
    from .fewshot import select_l2_by_mean_rank

    per_task = {r["task"]: {int(k): v for k, v in r["fewshot"].items()} for r in results}
    shared = select_l2_by_mean_rank(per_task)
    for r in results:
        for k, entry in r["fewshot"].items():
            pos = entry["l2_grid"].index(shared[int(k)])
            entry.update(l2=shared[int(k)], accuracy=entry["test_accuracy_per_l2"][pos],
                         val_accuracy=entry["val_accuracy_per_l2"][pos] if entry["val_accuracy_per_l2"] else None)
    return shared


def format_table(results: list[dict], shots: list[int]) -> str:
    has_knn = any("knn" in r for r in results)
    header = f"{'task':24s}" + "".join(f" {f'{k}-shot':>8s}" for k in shots) + (f" {'kNN':>8s}" if has_knn else "")
    lines = [header]
    for r in results:
        line = f"{r['task']:24s}" + "".join(f" {100 * r['fewshot'][str(k)]['accuracy']:7.2f}%" for k in shots)
        if has_knn:
            line += f" {100 * r['knn']['accuracy']:7.2f}%"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..cli_args import default_output_dir, load_model_from_args, positive_numbers, resolve_device
    from ..train.checkpoint import atomic_write_bytes
    from .plots import bar_plot

    args.device = resolve_device(args.device)
    shots = sorted(set(positive_numbers(args.shots, "--shots", int)))
    tasks = [t.strip() for t in args.data.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--data names no task")
    # Checked before any model or feature work, which takes minutes on real models.
    if args.knn_k < 0:
        raise ValueError(f"--knn-k must be >= 0 (0 skips kNN), got {args.knn_k}")
    for flag, value in (("--max-train-examples", args.max_train_examples),
                        ("--max-test-examples", args.max_test_examples), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.l2_selection == "mean-rank" and len(tasks) < 2:
        raise ValueError("--l2-selection mean-rank shares one l2 across tasks; give at least two tasks in --data")
    model, name = load_model_from_args(args)
    model.to(args.device)
    results = [evaluate_task(model, task, shots, args) for task in tasks]
    shared = apply_mean_rank(results) if args.l2_selection == "mean-rank" else None
    print(f"few-shot linear evaluation of {name} (l2 chosen by {args.l2_selection})")
    print(format_table(results, shots))

    out = Path(args.out) if args.out else default_output_dir(args.model, "eval")
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": name, "source": args.model, "shots": shots, "l2_selection": args.l2_selection,
               "seed": args.seed, "shared_l2": {str(k): v for k, v in shared.items()} if shared else None,
               "tasks": results}
    atomic_write_bytes(out / "fewshot.json", json.dumps(payload, indent=1).encode())
    bars = {f"{r['task']} {k}-shot": 100 * r["fewshot"][str(k)]["accuracy"] for r in results for k in shots}
    bars.update({f"{r['task']} kNN": 100 * r["knn"]["accuracy"] for r in results if "knn" in r})
    bar_plot(bars, out / "fewshot.png", title=f"{name}: few-shot and kNN accuracy", ylabel="test accuracy (%)",
             fmt="{:.1f}")
    print(f"wrote {out / 'fewshot.json'} and {out / 'fewshot.png'}")
    return 0
