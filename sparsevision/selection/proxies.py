"""Cheap proxies for "how well will this checkpoint fine-tune on my task?": the scores model selection ranks by.

Three kinds, after Renggli et al. 2022 ("Which Model to Transfer? Finding the Needle in the Growing Haystack"):

* task-aware "knn": accuracy of a k-nearest-neighbour classifier on the candidate's frozen features of the task's
  *training split* (the proxy of Puigcerver et al. 2020, Renggli et al. 2022 and the pre-selection step of Mustafa
  et al. 2020). Default: leave-one-out over the training features (every training point is classified by its k
  nearest *other* training points; no validation data is spent), 1 nearest neighbour, Euclidean distance on the
  raw pre-logits features. `mode="holdout"` instead fits on a stratified part of the training split and scores the
  held-out rest (`holdout_split`). k, metric and mode are options; the defaults are our reading of the papers.
* task-aware "linear": accuracy of the few-shot ridge classifier (`sparsevision.evaluate.fewshot.
  ridge_l2_search`: standardised features, +-1 targets, closed form) fitted on the fit part of the training split
  and scored on its held-out part; the l2 penalty is the grid value with the best held-out accuracy (ties to the
  larger l2). A closed-form stand-in for the papers' "linear evaluation" proxy (a logistic-regression head trained
  on frozen features), cheap enough to run on every candidate.
* task-agnostic "upstream": a score declared for each candidate without looking at the task (e.g. its ImageNet
  accuracy): a JSON mapping {candidate: score}, or a metric of the candidate's own training run
  (`SPLIT.KEY` from its metrics.jsonl, e.g. "test.accuracy"). The same ranking results for every task.

Both task-aware proxies use only the training split, so the task's validation split stays untouched for
fine-tuning, early choices and ensemble selection, and its test split for the ground truth.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..evaluate.fewshot import ridge_l2_search
from ..evaluate.knn import knn_accuracy, knn_loo_accuracy

PROXIES = ("knn", "linear", "upstream")
KNN_MODES = ("loo", "holdout")
DEFAULT_KNN_K = 1
DEFAULT_KNN_METRIC = "l2"
DEFAULT_HOLDOUT_FRACTION = 0.2
# A coarse version of the few-shot grid (2^-10 ... 2^19): ridge accuracy is flat over factors of 4.
DEFAULT_L2_GRID = tuple(2.0 ** i for i in range(-6, 20, 2))


def check_proxies(proxies: Sequence[str]) -> list[str]:
    """The proxy names in order, without repeats; ValueError naming an unknown one."""
    names = list(dict.fromkeys(proxies))
    if not names:
        raise ValueError(f"give at least one proxy out of {', '.join(PROXIES)}")
    bad = [p for p in names if p not in PROXIES]
    if bad:
        raise ValueError(f"unknown proxy {bad[0]!r}; choose from {', '.join(PROXIES)}")
    return names


def _labels(labels) -> np.ndarray:
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y


def holdout_split(labels, fraction: float = DEFAULT_HOLDOUT_FRACTION,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of one labelled set, stratified by class.

    Per class c (in order, one `np.random.default_rng(seed)`), a permutation of its indices; the first
    round(fraction * n_c) are held out, at least one and at most n_c - 1 when the class has two or more members
    (a class with a single member is only fitted on). Both index arrays are sorted.
    """
    y = _labels(labels)
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        if members.size >= 2:
            held.append(members[:min(members.size - 1, max(1, round(fraction * members.size)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if held_idx.size == 0:
        raise ValueError("no class has two examples, so nothing can be held out of the training split")
    fit_idx = np.setdiff1d(np.arange(y.size), held_idx)
    return fit_idx, held_idx


def knn_proxy(feats, labels, k: int = DEFAULT_KNN_K, metric: str = DEFAULT_KNN_METRIC, mode: str = "loo",
              holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, seed: int = 0) -> float:
    """kNN accuracy of the task's training features: leave-one-out ("loo") or on a held-out part ("holdout").

    Votes are uniform (majority of the k neighbours); ties follow `sparsevision.evaluate.knn`.
    """
    if mode not in KNN_MODES:
        raise ValueError(f"kNN proxy mode must be one of {KNN_MODES}, got {mode!r}")
    y = _labels(labels)
    if mode == "loo":
        return knn_loo_accuracy(feats, y, k=k, metric=metric)
    fit_idx, held_idx = holdout_split(y, holdout_fraction, seed)
    x = feats[fit_idx] if hasattr(feats, "detach") else np.asarray(feats)[fit_idx]
    q = feats[held_idx] if hasattr(feats, "detach") else np.asarray(feats)[held_idx]
    return knn_accuracy(x, y[fit_idx], q, y[held_idx], k=k, metric=metric)


def linear_proxy(feats, labels, num_classes: int | None = None, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                 holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, seed: int = 0) -> tuple[float, float]:
    """(held-out accuracy, chosen l2) of the ridge linear probe fitted on the rest of the training features."""
    x = np.asarray(feats.detach().cpu().double() if hasattr(feats, "detach") else feats, dtype=np.float64)
    y = _labels(labels)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ValueError(f"feats must be [N, D] with one row per label, got {x.shape} for {y.size} labels")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    fit_idx, held_idx = holdout_split(y, holdout_fraction, seed)
    l2, accuracies = ridge_l2_search(x[fit_idx], y[fit_idx], x[held_idx], y[held_idx], num_classes, l2_grid)
    return max(accuracies), float(l2)


# ------------------------------------------------------------------------------------------ task-agnostic scores

def candidate_keys(spec: str, name: str | None = None) -> list[str]:
    """Keys a declared score / accuracy file may use for one candidate: its label, the text as given, the
    absolute path, and the last path component (the run or file name)."""
    keys = [name] if name else []
    keys += [spec, os.path.abspath(spec), Path(os.path.normpath(spec)).name]
    return list(dict.fromkeys(k for k in keys if k))


def read_score_file(path: str | os.PathLike, what: str = "score") -> dict[str, float]:
    """{candidate: number} from a JSON object file; ValueError naming the file and the bad entry."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object {{candidate: {what}}}, "
                         f"got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what} file {path}: entry {key!r} must be a finite number, got {value!r}")
        out[str(key)] = float(value)
    return out


def lookup_scores(table: Mapping[str, float], specs: Sequence[str], names: Sequence[str], source: str,
                  what: str = "score") -> dict[str, float]:
    """{name: table value} for every candidate, matched by any of `candidate_keys`; ValueError for a missing one."""
    out = {}
    for spec, name in zip(specs, names):
        keys = candidate_keys(spec, name)
        hit = next((k for k in keys if k in table), None)
        if hit is None:
            shown = ", ".join(repr(k) for k in list(table)[:8]) or "none"
            raise ValueError(f"{source} has no {what} for candidate {spec!r} (looked for {', '.join(map(repr, keys))}"
                             f"; its keys: {shown})")
        out[name] = float(table[hit])
    return out


def _run_dir(spec: str) -> Path | None:
    """The training run directory a candidate comes from (run dir, checkpoint dir or a file inside one)."""
    path = Path(spec)
    for candidate in [path, *path.parents][:4]:
        if (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def run_metric(spec: str, metric: str) -> float:
    """The last value of `metric` ("SPLIT.KEY", e.g. "test.accuracy") in the candidate's run metrics.jsonl."""
    from ..train.writer import read_metrics

    split, sep, key = metric.partition(".")
    if not sep or not split or not key:
        raise ValueError(f"upstream metric must look like SPLIT.KEY (e.g. test.accuracy), got {metric!r}")
    run_dir = _run_dir(spec)
    if run_dir is None:
        raise ValueError(f"candidate {spec!r} is not inside a training run (no metrics.jsonl found), so it has no "
                         f"{metric}; give --upstream-scores FILE.json instead")
    values = [r[key] for r in read_metrics(run_dir) if r.get("split") == split and r.get(key) is not None]
    if not values:
        raise ValueError(f"{run_dir}/metrics.jsonl has no {key!r} logged for split {split!r}")
    return float(values[-1])


def upstream_scores(specs: Sequence[str], names: Sequence[str], scores_file: str | None = None,
                    metric: str | None = None) -> dict[str, float]:
    """{name: declared upstream score}: from a JSON file, or else from each candidate's run metrics."""
    if scores_file:
        return lookup_scores(read_score_file(scores_file, "upstream score"), specs, names,
                             f"upstream score file {scores_file}", "upstream score")
    if metric:
        return {name: run_metric(spec, metric) for spec, name in zip(specs, names)}
    raise ValueError("the upstream proxy needs declared scores: --upstream-scores FILE.json ({candidate: score}) "
                     "or --upstream-metric SPLIT.KEY (read from each candidate's metrics.jsonl)")
