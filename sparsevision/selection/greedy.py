"""Greedy ensemble selection with replacement by validation cross-entropy (Caruana et al. 2004), the ensembling step
of "Deep Ensembles for Low-Data Transfer Learning" (Mustafa et al. 2020).

The ensemble predicts the average of its members' class probabilities; a model picked twice counts twice (weight
= times picked / ensemble size). Starting empty, each step adds the pool model (any of them, already picked or not)
whose addition gives the lowest cross-entropy of the averaged probabilities on the validation set:

    CE(S) = -(1/N) sum_i log( (1/|S|) sum_{m in S} p_m(y_i | x_i) ).

The first pick is therefore the single model with the lowest validation cross-entropy. Selection stops at
`max_members` picks, or, with `stop_when_worse=True` (default), as soon as no addition strictly lowers the loss,
so the loss path never increases. Ties between equally good additions go to the lower pool index.

Only the probability of the true class enters CE, so the search works on [M, N] log-probabilities of the labels,
and sums of probabilities are taken in log space (logaddexp), so logits far out in the tails lose nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..evaluate.calibration import INPUT_KINDS, to_log_probs, to_probs


@dataclass(frozen=True)
class GreedyEnsemble:
    members: list[int]  # pool indices in the order they were picked (repeats allowed)
    counts: np.ndarray  # [M] times each pool model was picked
    loss_path: list[float]  # validation CE after 1, 2, ... picks
    num_models: int = 0
    stopped_early: bool = False  # True when the last step found no addition that lowered the loss
    candidates_loss: list[list[float]] = field(default_factory=list)  # per step, CE after adding each pool model

    @property
    def weights(self) -> np.ndarray:
        """[M] float64 averaging weights (counts / ensemble size)."""
        return self.counts / self.counts.sum()

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def loss(self) -> float:
        return self.loss_path[-1]


def label_log_probs(predictions: Sequence, labels, inputs: str = "auto") -> np.ndarray:
    """[M, N] float64 log p_m(y_i) of each pool model m (from [N, C] logits or probabilities) at the labels."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    if len(predictions) == 0:
        raise ValueError("the pool is empty: give at least one [N, C] prediction")
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if y.ndim != 1 or (y.size and not np.all(y == np.round(y))):
        raise ValueError("labels must be a 1-D array of integer class ids")
    y = y.astype(np.int64)
    out = []
    for m, pred in enumerate(predictions):
        logp = to_log_probs(pred, inputs)
        if logp.shape[0] != y.size:
            raise ValueError(f"prediction {m} has {logp.shape[0]} rows but there are {y.size} labels")
        if y.size and (y.min() < 0 or y.max() >= logp.shape[1]):
            raise ValueError(f"labels must lie in [0, {logp.shape[1]}) for prediction {m} with {logp.shape[1]} "
                             f"classes")
        out.append(logp[np.arange(y.size), y])
    return np.stack(out)


def greedy_ensemble(predictions: Sequence, labels, max_members: int = 5, inputs: str = "auto",
                    stop_when_worse: bool = True) -> GreedyEnsemble:
    """Greedy selection with replacement of up to `max_members` picks from a pool of validation predictions.

    predictions: one [N, C] array / tensor per pool model (logits or probabilities, see `inputs`), all on the same
    N validation examples with the integer `labels` [N].
    """
    if int(max_members) < 1:
        raise ValueError(f"max_members must be >= 1, got {max_members}")
    logp = label_log_probs(predictions, labels, inputs)
    num_models, n = logp.shape
    log_sum = np.full(n, -np.inf)  # log of the summed probabilities of the members so far
    counts = np.zeros(num_models, dtype=np.int64)
    members, path, per_step = [], [], []
    stopped = False
    for size in range(1, int(max_members) + 1):
        with np.errstate(divide="ignore"):
            trial = np.logaddexp(log_sum[None, :], logp) - np.log(size)  # [M, N] log of the averaged probability
        losses = -trial.mean(axis=1)
        best = int(np.argmin(losses))  # first index among ties
        if stop_when_worse and path and not losses[best] < path[-1]:
            stopped = True
            break
        per_step.append([float(v) for v in losses])
        members.append(best)
        counts[best] += 1
        log_sum = np.logaddexp(log_sum, logp[best])
        path.append(float(losses[best]))
    return GreedyEnsemble(members, counts, path, num_models, stopped, per_step)


def ensemble_probs(predictions: Sequence, weights, inputs: str = "auto") -> np.ndarray:
    """[N, C] weighted average of the pool's class probabilities (weights need not be normalised)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size != len(predictions):
        raise ValueError(f"need one weight per prediction: {len(predictions)} predictions, weights shape {w.shape}")
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be non-negative with a positive sum")
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    total = None
    for weight, pred in zip(w, predictions):
        if weight == 0:
            continue
        p = to_probs(pred, inputs)
        if total is not None and p.shape != total.shape:
            raise ValueError(f"predictions have different shapes: {p.shape} and {total.shape}")
        total = weight * p if total is None else total + weight * p
    return total / w.sum()
