"""PNG figures of a model selection: proxy score against fine-tuned accuracy per candidate (one panel per proxy),
proxy scores as bars when there is no ground truth, and the validation loss path of a greedy ensemble.

Headless and atomic like `sparsevision.evaluate.plots` (whose figure and save helpers they share).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..utils.figures import new_figure, save_figure


def _panels(count: int, width: float = 4.2, height: float = 3.8):
    fig = new_figure((max(width, width * count), height))
    axes = fig.subplots(1, count, squeeze=False)[0]
    return fig, axes


def proxy_scatter(scores: Mapping[str, Mapping[str, float]], finetuned: Mapping[str, float], path,
                  title: str = "", regrets: Mapping[str, float] | None = None) -> Path:
    """One panel per proxy: x = proxy score, y = fine-tuned accuracy, one labelled point per candidate; the
    proxy's pick is ringed in red, the best fine-tuned candidate marked with a star. `regrets` ({proxy: relative
    regret}) go into the panel titles."""
    if not scores or not finetuned:
        raise ValueError("need proxy scores and fine-tuned accuracies to plot")
    best = max(finetuned, key=lambda n: finetuned[n])
    fig, axes = _panels(len(scores))
    for ax, (proxy, values) in zip(axes, scores.items()):
        names = [n for n in values if n in finetuned]
        xs, ys = [values[n] for n in names], [finetuned[n] for n in names]
        ax.scatter(xs, ys, color="tab:blue", zorder=2)
        pick = max(names, key=lambda n: values[n])
        ax.scatter([values[pick]], [finetuned[pick]], s=180, facecolors="none", edgecolors="tab:red", lw=2,
                   zorder=3, label=f"{proxy} pick")
        ax.scatter([values[best]], [finetuned[best]], marker="*", s=160, color="gold", edgecolors="black",
                   zorder=4, label="best fine-tuned")
        for n, x, y in zip(names, xs, ys):
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{proxy} proxy score")
        ax.set_ylabel("fine-tuned test accuracy")
        ax.margins(0.2)  # room for the labels of the extreme points
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        if regrets and proxy in regrets:
            ax.set_title(f"{proxy}: relative regret {100 * regrets[proxy]:.2f}%", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def proxy_bars(scores: Mapping[str, Mapping[str, float]], path, title: str = "") -> Path:
    """One panel per proxy with a bar per candidate, highest first."""
    if not scores:
        raise ValueError("no proxy scores to plot")
    fig, axes = _panels(len(scores))
    for ax, (proxy, values) in zip(axes, scores.items()):
        items = sorted(values.items(), key=lambda kv: -kv[1])
        bars = ax.bar(range(len(items)), [v for _, v in items], color="tab:blue", edgecolor="black")
        ax.bar_label(bars, labels=[f"{v:.3g}" for _, v in items], fontsize=7)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([n for n, _ in items], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"{proxy} proxy score")
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def ensemble_path_plot(loss_path: Sequence[float], best_single_loss: float, path, title: str = "") -> Path:
    """Validation cross-entropy after each greedy pick, against the best single model's."""
    if not loss_path:
        raise ValueError("the loss path is empty")
    fig = new_figure((5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    sizes = list(range(1, len(loss_path) + 1))
    ax.plot(sizes, loss_path, marker="o", label="greedy ensemble")
    ax.axhline(best_single_loss, ls="--", color="gray", label="best single model (by val accuracy)")
    ax.set_xticks(sizes)
    ax.set_xlabel("ensemble size (picks, with replacement)")
    ax.set_ylabel("validation cross-entropy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
