"""`sparsevision select`: rank candidate checkpoints for a task by cheap proxies, optionally measure each ranking's
regret against fine-tuned ground truth, and optionally build a greedy ensemble of the top candidates."""
from __future__ import annotations

import argparse

from ..cli_args import add_device_argument

HELP = ("rank checkpoints for a task by kNN / linear-probe / upstream proxies, with regret against fine-tuning "
        "and greedy low-data ensembles")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", nargs="+", required=True, metavar="CKPT",
                        help="two or more run directories, checkpoint directories or .safetensors files")
    parser.add_argument("--data", required=True, help="the task: a dataset name, e.g. digits, folder:<path>")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the dataset itself")
    parser.add_argument("--proxy", nargs="+", default=["knn"], metavar="PROXY",
                        help="ranking strategies: knn (default), linear, upstream (several allowed)")
    parser.add_argument("--upstream-scores", default=None, metavar="FILE.json",
                        help="declared task-agnostic scores, a JSON object {candidate: score}")
    parser.add_argument("--upstream-metric", default=None, metavar="SPLIT.KEY",
                        help="take the upstream score from each candidate's metrics.jsonl, e.g. test.accuracy")
    parser.add_argument("--knn-k", type=int, default=1, help="neighbours of the kNN proxy (default 1)")
    parser.add_argument("--knn-metric", default="l2", choices=("l2", "cosine"), help="kNN distance (default l2)")
    parser.add_argument("--knn-mode", default="loo", choices=("loo", "holdout"),
                        help="leave-one-out over the train split (default) or a held-out part of it")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="a seeded random subset of the train split for the proxies (default: all of it)")
    parser.add_argument("--ground-truth", default=None, metavar="finetune|FILE.json",
                        help="fine-tuned test accuracy per candidate: 'finetune' fine-tunes every candidate "
                             "(costly), or a JSON object {candidate: accuracy}")
    parser.add_argument("--regret", action="store_true", help="report each strategy's regret (needs --ground-truth)")
    parser.add_argument("--budget", type=int, default=1,
                        help="regret@B: the strategy keeps the best fine-tuned of its top B (default 1)")
    parser.add_argument("--ensemble", action="store_true",
                        help="kNN-rank, fine-tune the top K, greedy ensemble by validation cross-entropy")
    parser.add_argument("--top-k", type=int, default=None, help="candidates to fine-tune for the ensemble "
                                                                "(default: min(3, number of candidates))")
    parser.add_argument("--max-members", type=int, default=5, help="greedy picks, with replacement (default 5)")
    parser.add_argument("--lrs", default="0.003", help="comma-separated fine-tuning learning rates; each "
                                                        "(candidate, lr) run is one pool member (default 0.003)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply the BiT-HyperRule fine-tuning schedule (e.g. 0.1 for a quick run)")
    parser.add_argument("--finetune-batch-size", type=int, default=512, help="fine-tuning batch (BiT: 512)")
    parser.add_argument("--max-eval-examples", type=int, default=None,
                        help="first N validation / test examples for fine-tuned evaluation (default: all)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of feature extraction")
    add_device_argument(parser)
    parser.add_argument("--out", default="selection", help="output directory (default ./selection)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_args(args, num_candidates: int) -> None:
    if args.regret and not args.ground_truth:
        raise ValueError("--regret needs --ground-truth finetune or --ground-truth FILE.json")
    if "upstream" in args.proxy and not (args.upstream_scores or args.upstream_metric):
        raise ValueError("--proxy upstream needs --upstream-scores FILE.json or --upstream-metric SPLIT.KEY")
    if args.upstream_scores and args.upstream_metric:
        raise ValueError("give --upstream-scores or --upstream-metric, not both")
    if not 1 <= args.budget <= num_candidates:
        raise ValueError(f"--budget must be between 1 and the number of candidates ({num_candidates}), "
                         f"got {args.budget}")
    if args.ensemble:
        if args.top_k is not None and not 1 <= args.top_k <= num_candidates:
            raise ValueError(f"--top-k must be between 1 and the number of candidates ({num_candidates}), "
                             f"got {args.top_k}")
        if args.max_members < 1:
            raise ValueError(f"--max-members must be >= 1, got {args.max_members}")
    for name in ("knn_k", "batch_size", "finetune_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.steps_scale > 0:
        raise ValueError(f"--steps-scale must be > 0, got {args.steps_scale}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_table(names, scores, truth, regrets) -> None:
    from .select import rank

    columns = list(scores) + (["fine-tuned"] if truth else [])
    width = max(12, *(len(n) for n in names))
    print(f"{'candidate':{width}s} " + " ".join(f"{c:>10s}" for c in columns))
    for name in names:
        row = [scores[p].get(name) for p in scores] + ([truth[name]] if truth else [])
        print(f"{name:{width}s} " + " ".join(f"{_fmt(v):>10s}" for v in row))
    for proxy, values in scores.items():
        line = f"{proxy:>8s} ranking: {' > '.join(rank(values))}"
        if proxy in regrets:
            r = regrets[proxy]
            line += (f"  | regret@{r.budget}: {r.absolute:.4f} absolute, {100 * r.relative:.2f}% relative "
                     f"(gets {r.pick}, best is {r.best})")
        print(line)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from ..cli_args import positive_numbers, resolve_device
    from ..train.checkpoint import atomic_write_bytes
    from .plots import ensemble_path_plot, proxy_bars, proxy_scatter
    from .proxies import check_proxies
    from .select import (ProxySettings, candidate_names, check_candidates, load_ground_truth, rank, regret,
                         score_candidates)
    from .tuning import FinetuneSettings, TaskSplits, finetune_pool, ground_truth_from_runs

    args.device = resolve_device(args.device)
    specs = check_candidates(args.candidates)
    names = candidate_names(specs)
    proxies = check_proxies(args.proxy)
    args.proxy = proxies
    _check_args(args, len(specs))
    progress = not args.no_progress
    # Read the declared ground truth before any costly work, so a bad file fails at once.
    truth, truth_source = None, None
    if args.ground_truth and args.ground_truth != "finetune":
        truth, truth_source = load_ground_truth(args.ground_truth, specs, names), args.ground_truth
    if args.ensemble and "knn" not in proxies:
        print("note: --ensemble ranks by the kNN proxy; computing it too")
        proxies = proxies + ["knn"]
    settings = ProxySettings(knn_k=args.knn_k, knn_metric=args.knn_metric, knn_mode=args.knn_mode,
                             max_train_examples=args.max_train_examples, upstream_scores=args.upstream_scores,
                             upstream_metric=args.upstream_metric)
    ft_settings = FinetuneSettings(steps_scale=args.steps_scale, batch_size=args.finetune_batch_size,
                                   lrs=tuple(positive_numbers(args.lrs, "--lrs")),
                                   max_eval_examples=args.max_eval_examples, data_seed=args.data_seed)
    # Last of the cheap checks: every candidate is loaded from a path, and a missing one would otherwise fail only
    # after the features of those before it.
    missing = [s for s in specs if not Path(s).exists()]
    if missing:
        raise FileNotFoundError(f"candidate(s) not found: {', '.join(missing)} (each must be a run directory, "
                                f"checkpoint directory or .safetensors file)")

    splits = TaskSplits(args.data, args.data_seed)
    scores, details = score_candidates(specs, args.data, proxies, settings, names=names, data_seed=args.data_seed,
                                       batch_size=args.batch_size, device=args.device, progress=progress,
                                       splits=splits)
    runs = {}
    if args.ground_truth == "finetune":
        runs = finetune_pool(specs, names, splits, ft_settings, args.device, progress)
        truth, truth_source = ground_truth_from_runs(runs), "finetune"
    regrets = {}
    if args.regret:
        regrets = {p: regret(rank(scores[p]), truth, args.budget, strategy=p) for p in proxies}

    print(f"model selection on {args.data} ({len(specs)} candidates)")
    _print_table(names, scores, truth, regrets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "data": args.data, "data_seed": args.data_seed,
        "candidates": [details[n] | {"name": n} for n in names],
        "proxy_settings": dataclasses.asdict(settings),
        "proxies": {p: {"scores": scores[p], "ranking": rank(scores[p]), "pick": rank(scores[p])[0]}
                    for p in proxies},
        "ground_truth": None if truth is None else {
            "source": truth_source, "test_accuracy": truth,
            "runs": [r.summary() for rs in runs.values() for r in rs]},
        "regret": {p: r.to_dict() for p, r in regrets.items()} or None,
    }
    if runs:
        report["finetune_settings"] = dataclasses.asdict(ft_settings)
    atomic_write_bytes(out / "selection.json", json.dumps(report, indent=2).encode())
    title = f"model selection on {args.data}"
    if truth is not None:
        proxy_scatter(scores, truth, out / "selection.png", title, {p: r.relative for p, r in regrets.items()})
    else:
        proxy_bars(scores, out / "selection.png", title)
    print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")

    if args.ensemble:
        from .ensemble import evaluate_ensemble

        top_k = args.top_k or min(3, len(specs))
        top = rank(scores["knn"])[:top_k]
        chosen = [(specs[names.index(n)], n) for n in top]
        runs = finetune_pool([s for s, _ in chosen], top, splits, ft_settings, args.device, progress, done=runs)
        pool = [r for n in top for r in runs[n]]
        ens_report, greedy = evaluate_ensemble(pool, args.max_members)
        ens_report = {"data": args.data, "knn_ranking": rank(scores["knn"]), "top_k": top,
                      "finetune_settings": dataclasses.asdict(ft_settings), **ens_report}
        atomic_write_bytes(out / "ensemble.json", json.dumps(ens_report, indent=2).encode())
        single = ens_report["best_single"]
        ensemble_path_plot(greedy.loss_path, single["val_nll"], out / "ensemble.png",
                           f"greedy ensemble on {args.data}")
        ens = ens_report["ensemble"]
        print(f"ensemble of {ens['size']} picks ({ens['distinct_models']} distinct): {' + '.join(ens['members'])}")
        print(f"{'':14s} {'test acc':>9s} {'test NLL':>9s}")
        print(f"{'ensemble':14s} {100 * ens['test_accuracy']:8.2f}% {ens['test_nll']:9.4f}")
        print(f"{'best single':14s} {100 * single['test_accuracy']:8.2f}% {single['test_nll']:9.4f}"
              f"  ({single['member']}, by val accuracy)")
        print(f"wrote {out / 'ensemble.json'} and {out / 'ensemble.png'}")
    return 0
