"""Which checkpoint to fine-tune, and which to ensemble (Renggli et al. 2022; Mustafa et al. 2020).

* `proxies`: kNN and ridge linear-probe accuracy on the task's training split, declared upstream scores.
* `select`: rank candidates by a proxy, score a pool, regret of a ranking against fine-tuned accuracies.
* `greedy`: greedy ensemble selection with replacement by validation cross-entropy (pure numpy).
* `tuning`: fine-tune a candidate (BiT-HyperRule) and keep its validation / test logits.
* `ensemble`: the low-data ensemble recipe's report (ensemble vs best single model).
* `cli`: `sparsevision select`.
"""
from .greedy import GreedyEnsemble, ensemble_probs, greedy_ensemble
from .proxies import PROXIES, holdout_split, knn_proxy, linear_proxy, upstream_scores
from .select import ProxySettings, Regret, candidate_names, rank, regret, score_candidates

__all__ = [
    "GreedyEnsemble", "ensemble_probs", "greedy_ensemble",
    "PROXIES", "holdout_split", "knn_proxy", "linear_proxy", "upstream_scores",
    "ProxySettings", "Regret", "candidate_names", "rank", "regret", "score_candidates",
]
