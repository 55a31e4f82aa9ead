"""A suite's result for people and programs: a table on stdout, a JSON file and a bar plot (atomic writes)."""
from __future__ import annotations

import json
from pathlib import Path

from .runner import SuiteResult
from .tasks import GROUPS, select_tasks

GROUP_COLORS = {"natural": "tab:green", "specialized": "tab:orange", "structured": "tab:blue"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _count(score) -> str:
    return f"{score.present}/{score.total} tasks" + (", partial" if score.partial else "")


def format_table(result: SuiteResult) -> str:
    """Per-task accuracy (%) in suite order, missing tasks in place, then the group and overall means."""
    by_name = {r.name: r for r in result.tasks}
    missing = {m.name: m for m in result.missing}
    title = f"{result.suite} ({result.settings.get('mode')})" + (f" of {result.model}" if result.model else "")
    lines = [title, f"{'task':22s} {'group':12s} {'classes':>7s} {'test %':>8s} {'val200 %':>9s}  choice"]
    for name in result.settings["tasks"]:
        if name in by_name:
            r = by_name[name]
            choice = ", ".join(f"{k}={v:g}" for k, v in r.choice.items() if isinstance(v, (int, float)))
            lines.append(f"{r.name:22s} {r.group:12s} {r.num_classes:7d} {_pct(r.accuracy):>8s} "
                         f"{_pct(r.val_accuracy):>9s}  {choice}")
        elif name in missing:
            m = missing[name]
            lines.append(f"{m.name:22s} {m.group:12s} {'':7s} {'MISSING':>8s}")
    lines.append("")
    for group, score in result.groups.items():
        extra = f"  ({score.note})" if score.note else ""
        lines.append(f"{group:12s} mean {_pct(score.mean):>8s}  ({_count(score)}){extra}")
    lines.append(f"{'overall':12s} mean {_pct(result.overall.mean):>8s}  ({_count(result.overall)})")
    if result.missing:
        lines += ["", f"{len(result.missing)} task(s) missing; their data is not on this machine:"]
        for m in result.missing:
            lines.append(f"  {m.name}: {m.reason}")
            lines += [f"      {line}" for line in m.instructions.splitlines()]
    notes = [(r.name, n) for r in result.tasks for n in r.notes]
    if notes:
        lines += ["", "notes:"] + [f"  {name}: {note}" for name, note in notes]
    return "\n".join(lines)


def save_json(result: SuiteResult, path) -> Path:
    from ..train.checkpoint import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return path


def bar_plot(result: SuiteResult, path) -> Path:
    """One bar per task in suite order, coloured by group; missing tasks as hatched placeholders; dashed lines at
    the group means; the overall mean in the title."""
    from matplotlib.patches import Patch

    from ..utils.figures import new_figure, save_figure

    tasks = select_tasks(result.suite, result.settings["tasks"])
    by_name = {r.name: r for r in result.tasks}
    fig = new_figure((max(5.0, 0.55 * len(tasks) + 2.0), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, task in enumerate(tasks):
        color = GROUP_COLORS[task.group]
        if task.name in by_name:
            height = 100 * by_name[task.name].accuracy
            ax.bar(i, height, color=color, edgecolor="black")
            ax.text(i, height + 1, f"{height:.1f}", ha="center", va="bottom", fontsize=7)
        else:
            ax.bar(i, 100, color="none", edgecolor="lightgray", hatch="//")
            ax.text(i, 50, "missing", ha="center", va="center", rotation=90, fontsize=8, color="gray")
    for group in GROUPS:
        idx = [i for i, t in enumerate(tasks) if t.group == group]
        score = result.groups[group]
        if idx and score.mean is not None:
            ax.hlines(100 * score.mean, min(idx) - 0.4, max(idx) + 0.4, colors=GROUP_COLORS[group],
                      linestyles="--", lw=1.5)
    handles = [Patch(color=GROUP_COLORS[g], label=f"{g}: {_pct(s.mean)} ({_count(s)})")
               for g, s in result.groups.items() if s.total]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([t.name for t in tasks], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 115)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    overall = result.overall
    ax.set_title(f"{result.suite} ({result.settings.get('mode')}){' ' + result.model if result.model else ''}: "
                 f"overall {_pct(overall.mean)}% ({_count(overall)})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
