"""k-nearest-neighbour classification of frozen features, batched over queries.

Distances: "cosine" is 1 - cos(q, t) (scikit-learn's `metric="cosine"`; zero vectors count as orthogonal to
everything); "l2" is the Euclidean distance. Queries are processed in chunks so that one chunk of the query x train
distance matrix stays under `max_chunk_elements` entries (default 2^25: 128 MiB in float32), so 10k queries against
50k training points never build the full 10k x 50k matrix. Work happens on the device of `train_feats` when it is a
torch tensor, in float64 if the features are float64 and float32 otherwise.

Voting over the k nearest training points (the ordering of training points at exactly equal distance is whatever
`torch.topk` returns):
* "uniform": one vote each (majority vote);
* "distance": weight 1 / distance, and when some neighbours are at distance 0 only those vote (scikit-learn's
  `weights="distance"` rule);
* "exp": weight exp(-distance / temperature); with the cosine metric this is the exp(cos / T) weighting of the
  instance-discrimination kNN monitor (Wu et al. 2018) used by DINO (Caron et al. 2021, T = 0.07, k = 20).
Ties between classes with the same total vote go to the tied class whose nearest member ranks first among the
neighbours (so a k-NN tie falls back to the closest tied neighbour, never to the smaller class id).

`knn_loo_accuracy` is leave-one-out accuracy on one set: every point is classified by its k nearest *other*
points (excluded by index, so exact duplicates of it still vote), the model-selection proxy "kNN accuracy on the
task's training split".
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

METRICS = ("cosine", "l2")
WEIGHTS = ("uniform", "distance", "exp")
DEFAULT_MAX_CHUNK_ELEMENTS = 2 ** 25


def _as_features(x, name: str, device: torch.device | None = None) -> torch.Tensor:
    x = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x), device=device)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _as_labels(y, name: str, n: int) -> torch.Tensor:
    y = torch.as_tensor(y.detach() if isinstance(y, torch.Tensor) else np.asarray(y))
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per feature row), got shape {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"{name} must hold integer class ids")
    y = y.to(torch.int64)
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} contains negative class id {int(y.min())}")
    return y


def _check_args(k: int, metric: str, weights: str, temperature: float, n_train: int, loo: bool) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "exp" and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for weights='exp', got {temperature}")
    available = n_train - 1 if loo else n_train
    if not 1 <= int(k) <= available:
        raise ValueError(f"k must be between 1 and {available} (the number of {'other ' if loo else ''}training "
                         f"points), got k={k}")


def _neighbours(train: torch.Tensor, query: torch.Tensor, k: int, metric: str, self_offset: int | None,
                max_chunk_elements: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(distances [b, k] ascending, train indices [b, k]) per query chunk; self_offset excludes query i's own
    index self_offset + i (leave-one-out on the same set)."""
    if metric == "cosine":
        train = train / train.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        train_sq = (train * train).sum(1)
    chunk = max(1, max_chunk_elements // max(1, train.shape[0]))
    for start in range(0, query.shape[0], chunk):
        q = query[start:start + chunk].to(train.device)
        if metric == "cosine":
            dist = 1.0 - (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ train.T
        else:
            dist = ((q * q).sum(1, keepdim=True) + train_sq - 2.0 * q @ train.T).clamp_min(0.0).sqrt()
        if self_offset is not None:
            rows = torch.arange(q.shape[0], device=dist.device)
            dist[rows, rows + self_offset + start] = float("inf")
        yield torch.topk(dist, k, dim=1, largest=False, sorted=True)


def _vote(dist: torch.Tensor, nb_labels: torch.Tensor, num_classes: int, weights: str,
          temperature: float) -> torch.Tensor:
    if weights == "uniform":
        w = torch.ones_like(dist)
    elif weights == "exp":
        w = torch.exp(-(dist - dist[:, :1]) / temperature)  # shifted by the row minimum: same argmax, no overflow
    else:
        zero = dist == 0
        w = torch.where(zero.any(1, keepdim=True), zero.to(dist.dtype), 1.0 / dist.clamp_min(1e-300))
    votes = torch.zeros(dist.shape[0], num_classes, dtype=dist.dtype, device=dist.device)
    votes.scatter_add_(1, nb_labels, w)
    tied = votes == votes.max(1, keepdim=True).values
    first_tied = tied.gather(1, nb_labels).to(torch.int8).argmax(1)  # rank of the nearest neighbour of a tied class
    return nb_labels.gather(1, first_tied[:, None])[:, 0]


def _predict(train, train_labels, query, k, metric, weights, temperature, max_chunk_elements, loo):
    train = _as_features(train, "train_feats")
    labels = _as_labels(train_labels, "train_labels", train.shape[0]).to(train.device)
    _check_args(k, metric, weights, temperature, train.shape[0], loo)
    if loo:
        query = train
    else:
        query = _as_features(query, "query_feats", train.device).to(train.dtype)
        if query.shape[1] != train.shape[1]:
            raise ValueError(f"query_feats have dim {query.shape[1]} but train_feats have {train.shape[1]}")
    num_classes = int(labels.max()) + 1
    preds = []
    with torch.no_grad():
        for dist, idx in _neighbours(train, query, int(k), metric, 0 if loo else None, max_chunk_elements):
            preds.append(_vote(dist, labels[idx], num_classes, weights, temperature))
    return torch.cat(preds).cpu().numpy() if preds else np.zeros(0, dtype=np.int64)


def knn_predict(train_feats, train_labels, query_feats, k: int = 20, metric: str = "cosine",
                weights: str = "uniform", temperature: float = 0.07,
                max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> np.ndarray:
    """[Q] int64 predicted labels of `query_feats` [Q, D] from the k nearest of `train_feats` [N, D]."""
    return _predict(train_feats, train_labels, query_feats, k, metric, weights, temperature, max_chunk_elements,
                    loo=False)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, k: int = 20, metric: str = "cosine",
                 weights: str = "uniform", temperature: float = 0.07,
                 max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> float:
    """Fraction of queries whose kNN prediction equals `query_labels`."""
    pred = knn_predict(train_feats, train_labels, query_feats, k, metric, weights, temperature, max_chunk_elements)
    truth = _as_labels(query_labels, "query_labels", len(pred)).numpy()
    if len(pred) == 0:
        raise ValueError("query_feats is empty")
    return float(np.mean(pred == truth))


def knn_loo_accuracy(feats, labels, k: int = 20, metric: str = "cosine", weights: str = "uniform",
                     temperature: float = 0.07, max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS) -> float:
    """Leave-one-out kNN accuracy of one labelled set (each point voted on by its k nearest other points)."""
    pred = _predict(feats, labels, None, k, metric, weights, temperature, max_chunk_elements, loo=True)
    truth = _as_labels(labels, "labels", len(pred)).numpy()
    return float(np.mean(pred == truth))
