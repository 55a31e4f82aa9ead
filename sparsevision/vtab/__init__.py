"""VTAB-1k (Zhai et al. 2019) and the offline vtab-lite suite: tasks, protocol, runner and report.

    from sparsevision.vtab import AdaptSettings, run_suite, format_table
    result = run_suite(model, "vtab-lite", settings=AdaptSettings(mode="fewshot"))
    print(format_table(result))

Command line: `sparsevision vtab --model RUN_DIR [--suite vtab-1k|vtab-lite] [--mode finetune|linear|fewshot]`;
data for VTAB-1k: `python -m sparsevision.vtab.export` (see tasks.py for the layout).
"""
from .adapt import MODES, AdaptSettings, Adapted, adapt
from .data import TaskData, TaskUnavailable, load_task
from .report import bar_plot, format_table, save_json
from .runner import GroupScore, MissingTask, SuiteResult, TaskResult, find_missing, run_suite, summarize
from .tasks import (FINAL_TRAIN_EXAMPLES, GROUPS, LITE_TASKS, LITE_TEST_EXAMPLES, SUITES, TRAIN_EXAMPLES,
                    VAL_EXAMPLES, VTAB_TASKS, LiteTask, TfdsSplits, VtabTask, select_tasks)

__all__ = [
    "MODES", "AdaptSettings", "Adapted", "adapt", "TaskData", "TaskUnavailable", "load_task", "bar_plot",
    "format_table", "save_json", "GroupScore", "MissingTask", "SuiteResult", "TaskResult", "find_missing",
    "run_suite", "summarize", "FINAL_TRAIN_EXAMPLES", "GROUPS", "LITE_TASKS", "LITE_TEST_EXAMPLES", "SUITES",
    "TRAIN_EXAMPLES", "VAL_EXAMPLES", "VTAB_TASKS", "LiteTask", "TfdsSplits", "VtabTask", "select_tasks",
]
