"""Evaluation of frozen features and predictions: plain functions on tensors / arrays, returning JSON-ready numbers.

* `fewshot`: V-MoE / big_vision few-shot linear evaluation (closed-form ridge on +-1 targets, l2 grid).
* `knn`: batched kNN classification (cosine / L2), leave-one-out kNN accuracy.
* `calibration`: ECE / MCE, NLL, Brier, risk-coverage and AURC, `calibration_report`.
* `plots`: reliability diagram, risk-coverage curves, bar plot (headless PNGs).
* `zeroshot`: zero-shot classification and retrieval for image-text models (import it from its module).
"""
from .calibration import (aurc, brier_score, calibration_report, excess_aurc, expected_calibration_error,
                          max_calibration_error, negative_log_likelihood, reliability_bins, risk_coverage_curve,
                          to_probs, top_label)
from .fewshot import (DEFAULT_L2_GRID, DEFAULT_SHOTS, RidgeSolver, fewshot_eval, fit_linear_probe, pm1_targets,
                      ridge_fit, ridge_l2_search, sample_shots, select_l2_by_mean_rank)
from .knn import knn_accuracy, knn_loo_accuracy, knn_predict
from .plots import bar_plot, reliability_diagram, risk_coverage_plot

__all__ = [
    "aurc", "brier_score", "calibration_report", "excess_aurc", "expected_calibration_error",
    "max_calibration_error", "negative_log_likelihood", "reliability_bins", "risk_coverage_curve", "to_probs",
    "top_label",
    "DEFAULT_L2_GRID", "DEFAULT_SHOTS", "RidgeSolver", "fewshot_eval", "fit_linear_probe", "pm1_targets",
    "ridge_fit", "ridge_l2_search", "sample_shots", "select_l2_by_mean_rank",
    "knn_accuracy", "knn_loo_accuracy", "knn_predict",
    "bar_plot", "reliability_diagram", "risk_coverage_plot",
]
