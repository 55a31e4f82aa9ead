"""Run-directory logs: `metrics.jsonl` (one JSON object per logged step or evaluation) and, when the optional
`tensorboard` package is installed, TensorBoard events next to it.

Each record has `step` and `split` ("train", "val" or "test") and the scalars of that moment, e.g.
    {"step": 100, "split": "train", "loss": 0.41, "accuracy": 0.88, "lr": 0.0009, "throughput": 2100.5, ...}
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .checkpoint import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of a run's metrics.jsonl (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _clean(value):
    # JSON has no NaN / inf; write null rather than the non-standard tokens Python would emit.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends records to metrics.jsonl; on resume from `resume_step`, first drops records logged after that step
    by the interrupted run, so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step and r.get("split") != "test"]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        elif resume_step is None:
            self.path.write_text("")
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is an optional extra; without it only metrics.jsonl is written
                self._tb = None

    def write(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            split, step = record.get("split", "train"), record["step"]
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
