"""Headless matplotlib figures written atomically: every PNG the package writes goes through `save_figure`, so a
crash mid-write never leaves a truncated plot next to a run's results."""
from __future__ import annotations

import io
from pathlib import Path


def new_figure(size: tuple[float, float], dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, **savefig_kwargs) -> Path:
    """Render `fig` as PNG into `path` (parent folders created) through a temporary file and a rename."""
    from ..train.checkpoint import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    atomic_write_bytes(path, buffer.getvalue())
    return path
