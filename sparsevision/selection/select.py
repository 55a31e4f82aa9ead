"""Rank candidate checkpoints by proxies and measure each ranking's regret (Renggli et al. 2022, "Which Model to
Transfer? Finding the Needle in the Growing Haystack").

A search strategy (one proxy) ranks the pool; with a budget of B fine-tuning runs the user fine-tunes its top B
candidates and keeps the best of them. The ground truth t(m) is the test accuracy of candidate m after fine-tuning
on the task. The regret of the strategy is the gap between the best fine-tuned accuracy in the whole pool and the
one the strategy obtains:

    absolute regret = max_{m in pool} t(m) - max_{m in top-B} t(m)
    relative regret = absolute regret / max_{m in pool} t(m)      (0 when every candidate has accuracy 0)

The paper reports the relative form; both are given here. B = 1 (the strategy's single pick) is the default.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .proxies import (DEFAULT_HOLDOUT_FRACTION, DEFAULT_KNN_K, DEFAULT_KNN_METRIC, DEFAULT_L2_GRID, check_proxies,
                      knn_proxy, linear_proxy, lookup_scores, read_score_file, upstream_scores)


@dataclass(frozen=True)
class Regret:
    strategy: str
    budget: int
    pick: str  # the candidate the strategy ends with: the best fine-tuned among its top `budget`
    pick_accuracy: float
    best: str  # the best fine-tuned candidate of the whole pool
    best_accuracy: float
    absolute: float
    relative: float

    def to_dict(self) -> dict:
        return asdict(self)


def candidate_names(specs: Sequence[str]) -> list[str]:
    """Short unique labels: the last path component (run directory or file name), the full text where two
    candidates would share it. ValueError for a candidate given twice."""
    specs = [str(s) for s in specs]
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise ValueError(f"candidate {repeated[0]!r} is given more than once")
    short = [Path(os.path.normpath(s)).name or s for s in specs]
    return [s if short.count(n) > 1 else n for s, n in zip(specs, short)]


def check_candidates(specs: Sequence[str]) -> list[str]:
    specs = [str(s) for s in specs]
    if len(specs) < 2:
        raise ValueError(f"model selection needs at least two candidates, got {len(specs)}")
    return specs


def rank(scores: Mapping[str, float]) -> list[str]:
    """Candidate names from the highest score to the lowest; equal scores keep their given order."""
    for name, value in scores.items():
        if not np.isfinite(value):
            raise ValueError(f"score of {name!r} is {value}, not a finite number")
    names, values = list(scores), [float(v) for v in scores.values()]
    return [names[i] for i in sorted(range(len(names)), key=lambda i: -values[i])]


def regret(ranking: Sequence[str], finetuned: Mapping[str, float], budget: int = 1, strategy: str = "") -> Regret:
    """Regret of fine-tuning the top `budget` of `ranking` instead of the best candidate of the pool.

    finetuned: ground-truth accuracy of every candidate in the pool (the pool is its keys; the ranking must
    cover exactly those names). Ties for the best go to the earlier-ranked / earlier-listed candidate.
    """
    if not finetuned:
        raise ValueError("no fine-tuned accuracies given")
    if sorted(ranking) != sorted(finetuned) or len(set(ranking)) != len(ranking):
        missing = sorted(set(finetuned) - set(ranking)) or sorted(set(ranking) - set(finetuned))
        raise ValueError(f"the ranking and the fine-tuned accuracies must name the same candidates; "
                         f"differs at {missing[:3]}")
    if not 1 <= int(budget) <= len(ranking):
        raise ValueError(f"budget must be between 1 and the number of candidates ({len(ranking)}), got {budget}")
    for name, value in finetuned.items():
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"fine-tuned accuracy of {name!r} must be a finite number >= 0, got {value}")
    best = max(finetuned, key=lambda n: finetuned[n])
    pick = max(ranking[:int(budget)], key=lambda n: finetuned[n])
    best_acc, pick_acc = float(finetuned[best]), float(finetuned[pick])
    absolute = best_acc - pick_acc
    relative = absolute / best_acc if best_acc > 0 else 0.0
    return Regret(strategy, int(budget), pick, pick_acc, best, best_acc, absolute, relative)


def train_subset(dataset, max_examples: int | None, seed: int = 0):
    """`dataset` itself, or a seeded random subset of `max_examples` items (kept in index order), so a class-sorted
    folder dataset still gives every class."""
    if max_examples is None or max_examples >= len(dataset):
        return dataset
    if max_examples < 2:
        raise ValueError(f"max_train_examples must be >= 2, got {max_examples}")
    from torch.utils.data import Subset

    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), size=int(max_examples), replace=False))
    return Subset(dataset, idx.tolist())


@dataclass(frozen=True)
class ProxySettings:
    knn_k: int = DEFAULT_KNN_K
    knn_metric: str = DEFAULT_KNN_METRIC
    knn_mode: str = "loo"  # loo | holdout
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    l2_grid: tuple = DEFAULT_L2_GRID
    max_train_examples: int | None = None  # the proxies' share of the train split (None: all of it)
    seed: int = 0  # of the train subset and the holdout split
    upstream_scores: str | None = None  # JSON file {candidate: score}
    upstream_metric: str | None = None  # "SPLIT.KEY" in each candidate's metrics.jsonl


def score_candidates(specs: Sequence[str], data: str, proxies: Sequence[str],
                     settings: ProxySettings = ProxySettings(), *, names: Sequence[str] | None = None,
                     data_seed: int = 0, batch_size: int = 128, device: str = "cpu",
                     progress: bool = True, splits=None) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """({proxy: {name: score}}, {name: details}) for every candidate and requested proxy.

    Task-aware proxies load each candidate in turn (`load_model`), extract its pre-logits features of the task's
    train split at the candidate's own input size, and score them; the model is released before the next one.
    `splits`: a `tuning.TaskSplits` of `data` to share the built datasets with fine-tuning (default: a new one).
    """
    from tqdm.auto import tqdm

    proxies = check_proxies(proxies)
    specs = check_candidates(specs)
    names = list(names) if names is not None else candidate_names(specs)
    scores: dict[str, dict[str, float]] = {p: {} for p in proxies}
    details: dict[str, dict] = {n: {"source": s} for s, n in zip(specs, names)}
    if "upstream" in proxies:
        scores["upstream"] = upstream_scores(specs, names, settings.upstream_scores, settings.upstream_metric)
    task_aware = [p for p in proxies if p != "upstream"]
    if task_aware:
        from ..models.loading import load_model
        from ..transfer.features import extract_features, model_image_size
        from .tuning import TaskSplits

        splits = splits if splits is not None else TaskSplits(data, data_seed)
        if (splits.data, splits.seed) != (data, data_seed):
            raise ValueError(f"splits hold {splits.data!r} (seed {splits.seed}), not the task {data!r} (seed "
                             f"{data_seed})")
        for spec, name in tqdm(list(zip(specs, names)), desc="proxies", disable=None if progress else True):
            model, model_name = load_model(spec)
            model.to(device)
            size = model_image_size(model)
            train = splits.get("train", size)
            subset = train_subset(train, settings.max_train_examples, settings.seed)
            feats, labels = extract_features(model, subset, batch_size=batch_size, device=device,
                                             progress=progress, desc=f"features {name}")
            del model
            details[name].update(model=model_name, image_size=size, num_train=int(len(labels)),
                                 feature_dim=int(feats.shape[1]))
            if "knn" in task_aware:
                scores["knn"][name] = knn_proxy(feats, labels, settings.knn_k, settings.knn_metric,
                                                settings.knn_mode, settings.holdout_fraction, settings.seed)
            if "linear" in task_aware:
                accuracy, l2 = linear_proxy(feats, labels, train.num_classes, settings.l2_grid,
                                            settings.holdout_fraction, settings.seed)
                scores["linear"][name] = accuracy
                details[name]["linear_l2"] = l2
    return scores, details


def load_ground_truth(path: str, specs: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """{name: fine-tuned accuracy} from a JSON file {candidate: accuracy}, matched like the upstream scores."""
    return lookup_scores(read_score_file(path, "fine-tuned accuracy"), specs, names,
                         f"ground-truth file {path}", "fine-tuned accuracy")
