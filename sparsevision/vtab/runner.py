"""Run a suite (VTAB-1k or vtab-lite) on one pre-trained model: every task adapted and tested, then averaged.

Averages are the paper's: a group's score is the mean accuracy of its tasks, the overall score the mean over all
tasks (not the mean of the three group means). A task whose data is not on the machine is never skipped silently:
it is listed as missing with the reason and how to get it, and every mean it would enter is computed over the
present tasks only, with present / total counts and `partial: true`.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from .adapt import AdaptSettings, adapt
from .data import TaskUnavailable, check_vtab_folder, load_task
from .tasks import (FINAL_TRAIN_EXAMPLES, GROUPS, LITE_NO_STAND_IN, LITE_TEST_EXAMPLES, TRAIN_EXAMPLES, VAL_EXAMPLES,
                    LiteTask, default_data_dir, select_tasks)


@dataclass
class TaskResult:
    name: str
    group: str
    num_classes: int
    accuracy: float  # on test, after the final run on train800val200
    val_accuracy: float | None  # on val200, of the chosen setting fitted on train800 (None when nothing was chosen)
    choice: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)  # train / val / final_train / test example counts
    stands_in_for: str | None = None  # vtab-lite: the VTAB-1k task it mimics
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class MissingTask:
    name: str
    group: str
    reason: str
    instructions: str


@dataclass
class GroupScore:
    mean: float | None  # None when no task of the group ran
    present: int
    total: int
    partial: bool
    note: str = ""


@dataclass
class SuiteResult:
    suite: str
    model: str
    settings: dict
    tasks: list[TaskResult]
    missing: list[MissingTask]
    groups: dict[str, GroupScore]
    overall: GroupScore

    def to_dict(self) -> dict:
        return asdict(self)


def _score(accuracies: list[float], total: int, note: str = "") -> GroupScore:
    mean = sum(accuracies) / len(accuracies) if accuracies else None
    return GroupScore(mean, len(accuracies), total, len(accuracies) < total, note)


def summarize(results: list[TaskResult], tasks, suite: str = "") -> tuple[dict[str, GroupScore], GroupScore]:
    """Group means and the overall mean over the tasks that ran, out of `tasks` (the ones asked for)."""
    by_name = {r.name: r for r in results}
    groups = {}
    for group in GROUPS:
        members = [t for t in tasks if t.group == group]
        note = LITE_NO_STAND_IN.get(group, "") if suite == "vtab-lite" and not members else ""
        groups[group] = _score([by_name[t.name].accuracy for t in members if t.name in by_name], len(members), note)
    overall = _score([by_name[t.name].accuracy for t in tasks if t.name in by_name], len(tasks))
    return groups, overall


def find_missing(tasks, data_dir) -> list[MissingTask]:
    """VTAB-1k tasks whose folder is absent or incomplete (a cheap check, before anything runs)."""
    missing = []
    for task in tasks:
        if isinstance(task, LiteTask):
            continue
        try:
            check_vtab_folder(task, data_dir)
        except TaskUnavailable as err:
            missing.append(MissingTask(task.name, task.group, str(err), task.instructions(data_dir)))
    return missing


def run_suite(model, suite: str = "vtab-lite", *, tasks=None, settings: AdaptSettings | None = None,
              data_dir: str | os.PathLike | None = None, test_examples: int | None = None, device=None,
              model_name: str = "", progress: bool = True, inner_progress: bool = False) -> SuiteResult:
    """Adapt `model` to each task of `suite` (or the named `tasks`) and test it; see the module docstring."""
    from ..transfer.features import model_image_size

    settings = settings or AdaptSettings()
    selected = select_tasks(suite, tasks)
    data_dir = str(data_dir or default_data_dir())
    image_size = model_image_size(model)
    missing = find_missing(selected, data_dir)
    skip = {m.name for m in missing}
    results: list[TaskResult] = []
    bar = tqdm(selected, desc=f"{suite} ({settings.mode})", unit="task", disable=None if progress else True)
    for task in bar:
        if task.name in skip:
            continue
        bar.set_postfix_str(task.name)
        start = time.perf_counter()
        try:
            data = load_task(task, image_size=image_size, data_dir=data_dir, test_examples=test_examples)
        except TaskUnavailable as err:  # present but unusable, e.g. too few images
            missing.append(MissingTask(task.name, task.group, str(err), task.instructions(data_dir)))
            continue
        out = adapt(model, data, settings, task.name, device=device, progress=inner_progress)
        results.append(TaskResult(task.name, task.group, task.num_classes, out.test_accuracy, out.val_accuracy,
                                  out.choice, data.sizes(), getattr(task, "stands_in_for", None), data.notes,
                                  out.details, round(time.perf_counter() - start, 3)))
    bar.close()
    order = {t.name: i for i, t in enumerate(selected)}
    missing.sort(key=lambda m: order[m.name])
    groups, overall = summarize(results, selected, suite)
    if test_examples is None:
        test_examples = LITE_TEST_EXAMPLES if suite == "vtab-lite" else "all"
    recorded = {**settings.relevant(), "suite": suite, "tasks": [t.name for t in selected],
                "protocol": {"train": TRAIN_EXAMPLES, "val": VAL_EXAMPLES, "final_train": FINAL_TRAIN_EXAMPLES,
                             "test": test_examples},
                "image_size": image_size, "data_dir": data_dir if suite == "vtab-1k" else None}
    return SuiteResult(suite, model_name, recorded, results, missing, groups, overall)
