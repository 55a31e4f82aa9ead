"""Loss and accuracy curves of a run as a PNG, drawn from its metrics.jsonl records.

Uses matplotlib's object API with the Agg canvas directly, so it works headless and never touches the global
pyplot backend of a program that imports sparsevision.
"""
from __future__ import annotations

import os
from pathlib import Path


PLOT_FILE = "curves.png"
_STYLE = {"train": dict(color="tab:blue", lw=1.0, alpha=0.8), "val": dict(color="tab:orange", lw=1.5, marker="o",
          ms=3), "test": dict(color="tab:green", marker="*", ms=10, ls="none")}


def plot_metrics(records: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Two panels (loss, accuracy) against step, one line per split; written atomically to `path`."""
    from ..utils.figures import new_figure, save_figure

    fig = new_figure((10, 4))
    for panel, key in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, panel + 1)
        for split, style in _STYLE.items():
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=split, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        losses = [r["loss"] for r in records if r.get("loss") is not None]
        if key == "loss" and losses and min(losses) > 0:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
