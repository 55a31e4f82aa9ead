"""PNG figures for evaluation results: reliability diagram, risk-coverage curves, labelled bar plot.

Drawn with matplotlib's object API on an Agg canvas (never pyplot), so nothing opens a window or changes the
backend of the program importing sparsevision. Each file is written to a temporary name and renamed into place,
so a reader never sees half a PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..utils.figures import new_figure, save_figure
from .calibration import (DEFAULT_NUM_BINS, aurc, expected_calibration_error, reliability_bins,
                          risk_coverage_curve, top_label)


def reliability_diagram(probs_or_logits, labels, path, num_bins: int = DEFAULT_NUM_BINS, title: str = "",
                        inputs: str = "auto") -> Path:
    """Accuracy per equal-width confidence bin against the diagonal (Guo et al. 2017, Fig. 1), with the gap to
    each bin's mean confidence shaded and the bin counts below; the ECE is in the legend."""
    bins = reliability_bins(probs_or_logits, labels, num_bins, "equal_width", inputs)
    ece = expected_calibration_error(probs_or_logits, labels, num_bins, "equal_width", inputs)
    lower, upper = np.array(bins["lower"]), np.array(bins["upper"])
    full = np.array([n > 0 for n in bins["count"]])
    acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
    conf = np.array([c if c is not None else 0.0 for c in bins["confidence"]])
    fig = new_figure((5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = upper - lower
    top.bar(lower[full], acc[full], width=width[full], align="edge", color="tab:blue", edgecolor="black",
            label=f"accuracy (ECE {ece:.3f})")
    top.bar(lower[full], conf[full] - acc[full], bottom=acc[full], width=width[full], align="edge",
            color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    top.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    bottom.bar(lower, bins["count"], width=width, align="edge", color="gray", edgecolor="black")
    bottom.set_xlabel("confidence (top label)")
    bottom.set_ylabel("count")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def risk_coverage_plot(predictions: Mapping[str, tuple], path, title: str = "", inputs: str = "auto") -> Path:
    """One risk-coverage curve per entry of {name: (probs_or_logits, labels)}, AURC in the legend."""
    if not predictions:
        raise ValueError("predictions is empty: give {name: (probs_or_logits, labels)}")
    fig = new_figure((6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, pair in predictions.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"predictions[{name!r}] must be a (probs_or_logits, labels) pair")
        conf, correct = top_label(pair[0], pair[1], inputs)
        coverage, risk = risk_coverage_curve(conf, correct)
        ax.plot(coverage, risk, label=f"{name} (AURC {aurc(conf, correct):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage")
    ax.set_ylabel("selective risk (error rate)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def bar_plot(values: Mapping[str, float], path, title: str = "", ylabel: str = "", sort: bool = False,
             fmt: str = "{:.3g}") -> Path:
    """One labelled bar per {name: value} (e.g. accuracy per VTAB task), values printed on the bars."""
    if not values:
        raise ValueError("values is empty")
    items = list(values.items())
    bad = [k for k, v in items if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v)]
    if bad:
        raise ValueError(f"values must be finite numbers; bad entries: {bad[:5]}")
    if sort:
        items.sort(key=lambda kv: kv[1], reverse=True)
    names, heights = [k for k, _ in items], [float(v) for _, v in items]
    fig = new_figure((max(4.0, 0.6 * len(names) + 1.5), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(range(len(names)), heights, color="tab:blue", edgecolor="black")
    ax.bar_label(bars, labels=[fmt.format(h) for h in heights], fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
