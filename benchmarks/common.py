"""Shared pieces of the benchmark scripts: device and dtype flags, timing, the result table and the JSON file.

Timing on CUDA uses one pair of CUDA events per repeat (GPU time of the whole step, launch gaps included) after
`warmup` untimed repeats, with `torch.cuda.synchronize()` before reading them; on CPU, `time.perf_counter`. The
reported time is the median over repeats (the minimum is kept too).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_common_args(parser, json_default: str) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="compute dtype (default bf16; see each script for params vs autocast)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed repeats first (allocator, cuDNN/cuBLAS)")
    parser.add_argument("--json", default=json_default, help="where to write the results (JSON)")
    parser.add_argument("--seed", type=int, default=0)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Median and minimum milliseconds of `step()` over `repeats` runs, after `warmup` runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def environment(device: torch.device, script: str, argv: Sequence[str] | None) -> dict:
    """Where and how the numbers were taken: device, versions, UTC date and the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", f"benchmarks/{os.path.basename(script)}", *argv]),
        "cpu_threads": torch.get_num_threads(),
    }


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], header: bool = True) -> str:
    """columns: (key, header, format spec); missing values print as '-'. header=False: the rows only (widths
    from the rows), for printing progress one row at a time."""
    def cell(row, key, spec):
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, spec) if spec else str(value)

    cells = [[header for _, header, _ in columns]] + [[cell(r, k, s) for k, _, s in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    last = len(columns) - 1  # first and last columns are text (name, note): left-aligned
    lines = ["  ".join(c.ljust(w) if i in (0, last) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             .rstrip() for line in cells]
    if not header:
        return "\n".join(lines[1:])
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
