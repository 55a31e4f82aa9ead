"""The low-data ensemble recipe of "Deep Ensembles for Low-Data Transfer Learning" (Mustafa et al. 2020):

1. rank the pre-trained candidates by the kNN proxy on the task's training split (`proxies.knn_proxy`);
2. fine-tune the top K of them (each with every learning rate of a small sweep; one lr by default);
3. build an ensemble greedily, with replacement, minimising the validation cross-entropy of the averaged
   probabilities (`greedy.greedy_ensemble`, up to `max_members` picks);
4. report test accuracy and NLL of the ensemble against the best single fine-tuned model, chosen by validation
   accuracy (ties to the lower validation NLL), as a user without an ensemble would choose it.

Every fine-tuning run (candidate x lr) is one member of the pool the greedy step draws from. The paper works at
a larger scale (it pre-selects from over 2,000 models and fine-tunes each with a small hyperparameter sweep); K,
the lr sweep (one lr by default) and the number of greedy picks (5 by default) are arguments here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..evaluate.calibration import negative_log_likelihood
from .greedy import GreedyEnsemble, ensemble_probs, greedy_ensemble
from .tuning import FinetunedCandidate

__all__ = ["GreedyEnsemble", "ensemble_probs", "greedy_ensemble", "evaluate_ensemble", "best_single"]


def best_single(pool: Sequence[FinetunedCandidate]) -> int:
    """Index of the run a single-model user keeps: best validation accuracy, then lowest validation NLL."""
    if not pool:
        raise ValueError("the pool of fine-tuned runs is empty")
    keys = [(-run.val_accuracy, negative_log_likelihood(run.val_logits, run.val_labels, "logits")) for run in pool]
    return min(range(len(pool)), key=lambda i: keys[i])


def _check_same_examples(pool: Sequence[FinetunedCandidate]) -> None:
    first = pool[0]
    for run in pool[1:]:
        if not (np.array_equal(run.val_labels, first.val_labels) and np.array_equal(run.test_labels,
                                                                                     first.test_labels)):
            raise ValueError(f"{run.label} and {first.label} were evaluated on different examples; an ensemble "
                             f"needs every member's predictions on the same validation and test sets")


def evaluate_ensemble(pool: Sequence[FinetunedCandidate], max_members: int = 5) -> tuple[dict, GreedyEnsemble]:
    """Greedy ensemble of the pool on validation, and its test accuracy / NLL next to the best single run's.

    Returns (JSON-ready report, the GreedyEnsemble).
    """
    pool = list(pool)
    if not pool:
        raise ValueError("the pool of fine-tuned runs is empty")
    _check_same_examples(pool)
    val_labels, test_labels = pool[0].val_labels, pool[0].test_labels
    greedy = greedy_ensemble([run.val_logits for run in pool], val_labels, max_members, inputs="logits")
    test_probs = ensemble_probs([run.test_logits for run in pool], greedy.counts, inputs="logits")
    single = best_single(pool)
    single_run = pool[single]
    labels = [run.label if sum(r.name == run.name for r in pool) > 1 else run.name for run in pool]
    ensemble = {
        "members": [labels[i] for i in greedy.members],
        "weights": {labels[i]: float(w) for i, w in enumerate(greedy.weights) if w > 0},
        "size": greedy.size, "distinct_models": int((greedy.counts > 0).sum()),
        "val_loss_path": greedy.loss_path, "stopped_early": greedy.stopped_early,
        "test_accuracy": float(np.mean(test_probs.argmax(1) == test_labels)),
        "test_nll": negative_log_likelihood(test_probs, test_labels, "probs"),
    }
    single_report = {
        "member": labels[single],
        "val_accuracy": single_run.val_accuracy,
        "val_nll": negative_log_likelihood(single_run.val_logits, val_labels, "logits"),
        "test_accuracy": single_run.test_accuracy,
        "test_nll": negative_log_likelihood(single_run.test_logits, test_labels, "logits"),
    }
    report = {
        "pool": [dict(run.summary(), label=label) for run, label in zip(pool, labels)],
        "max_members": int(max_members),
        "ensemble": ensemble,
        "best_single": single_report,
        "gain": {"test_accuracy": ensemble["test_accuracy"] - single_report["test_accuracy"],
                 "test_nll": ensemble["test_nll"] - single_report["test_nll"]},
        "num_val": int(val_labels.size), "num_test": int(test_labels.size),
    }
    return report, greedy
