"""The three datasets of one task under the VTAB-1k protocol: train800, val200 (and their union) and test.

VTAB-1k tasks come from a local folder (`DATA_DIR/<task>/{train,val,test}/<class>/<image>`, see tasks.py); a task
whose folder is absent or unusable raises `TaskUnavailable` with the reason, which the runner reports together
with the task's download instructions. vtab-lite tasks are slices of the built-in datasets and always available.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from .tasks import LITE_TEST_EXAMPLES, TRAIN_EXAMPLES, VAL_EXAMPLES, LiteTask, VtabTask

FOLDER_SPLITS = ("train", "val", "test")
# A folder holding more images than the protocol uses is subsampled with this fixed seed (the data, not the run,
# so every model sees the same 1000 examples).
SUBSET_SEED = 0


class TaskUnavailable(Exception):
    """A task's data is not on this machine (or not usable); the message says what is wrong."""


@dataclass
class TaskData:
    train800: Dataset
    val200: Dataset
    test: Dataset
    num_classes: int
    notes: list[str] = field(default_factory=list)  # deviations from the official protocol, for the report

    @property
    def train800val200(self) -> Dataset:
        return ConcatDataset([self.train800, self.val200])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train800), "val": len(self.val200), "final_train": len(self.train800val200),
                "test": len(self.test)}


def _seeded_subset(dataset: Dataset, n: int) -> Subset:
    # Sorted, so a subset keeps the folder's order; random, because folder order is class order.
    picked = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(dataset))[:n])
    return Subset(dataset, picked.tolist())


def _exactly(dataset: Dataset, n: int, where: str, notes: list[str]) -> Dataset:
    if len(dataset) < n:
        raise TaskUnavailable(f"{where} holds {len(dataset)} images but the protocol needs {n}")
    if len(dataset) > n:
        notes.append(f"{where} holds {len(dataset)} images: used a fixed random {n} (not the official subset)")
        return _seeded_subset(dataset, n)
    return dataset


def check_vtab_folder(task: VtabTask, data_dir: str | os.PathLike) -> Path:
    """The task's folder, or TaskUnavailable saying what is missing (cheap: no image is read)."""
    root = task.folder(data_dir)
    if not root.is_dir():
        raise TaskUnavailable(f"no folder {root}")
    absent = [s for s in FOLDER_SPLITS if not (root / s).is_dir()]
    if absent:
        raise TaskUnavailable(f"{root} has no {', '.join(a + '/' for a in absent)} (needs train/, val/ and test/, "
                              f"each with one sub-folder per class)")
    return root


def load_vtab_task(task: VtabTask, data_dir: str | os.PathLike, image_size: int,
                   test_examples: int | None = None) -> TaskData:
    from ..data.folder import FolderDataset

    root = check_vtab_folder(task, data_dir)
    notes: list[str] = []
    try:
        splits = {s: FolderDataset(root, split=s, image_size=image_size) for s in FOLDER_SPLITS}
    except (ValueError, FileNotFoundError) as err:
        raise TaskUnavailable(str(err)) from err
    found = splits["train"].num_classes
    if found > task.num_classes:
        raise TaskUnavailable(f"{root} has {found} class folders but {task.name} has {task.num_classes} classes")
    train = _exactly(splits["train"], TRAIN_EXAMPLES, f"{root / 'train'}", notes)
    val = _exactly(splits["val"], VAL_EXAMPLES, f"{root / 'val'}", notes)
    test = splits["test"]
    if test_examples is not None and len(test) > test_examples:
        notes.append(f"test capped at a fixed random {test_examples} of {len(test)} images (not the full split)")
        test = _seeded_subset(test, test_examples)
    return TaskData(train, val, test, task.num_classes, notes)


def _slice(dataset: Dataset, start: int, stop: int, where: str) -> Subset:
    if len(dataset) < stop:
        raise ValueError(f"{where} has {len(dataset)} examples; the slice [{start}:{stop}] does not fit")
    return Subset(dataset, list(range(start, stop)))


def load_lite_task(task: LiteTask, image_size: int, test_examples: int | None = None) -> TaskData:
    """First 800 / 200 of the built-in splits (dataset seed 0) and the first `test_examples` of test."""
    from ..data import build_dataset

    built = {s: build_dataset(task.dataset, split=s, image_size=image_size, seed=0) for s in ("train", "val", "test")}
    split, start, stop = task.train800
    train = _slice(built[split], start, stop, f"{task.dataset}/{split}")
    split, start, stop = task.val200
    val = _slice(built[split], start, stop, f"{task.dataset}/{split}")
    if task.val200[0] == task.train800[0] and not (start >= task.train800[2] or stop <= task.train800[1]):
        raise ValueError(f"{task.name}: val200 {task.val200} overlaps train800 {task.train800}")
    limit = LITE_TEST_EXAMPLES if test_examples is None else test_examples
    test = Subset(built["test"], list(range(min(limit, len(built["test"])))))
    notes = [f"test capped at {test_examples} examples (suite default {LITE_TEST_EXAMPLES})"] \
        if test_examples is not None and test_examples != LITE_TEST_EXAMPLES else []
    return TaskData(train, val, test, task.num_classes, notes)


def load_task(task, *, image_size: int, data_dir: str | os.PathLike | None = None,
              test_examples: int | None = None) -> TaskData:
    if test_examples is not None and test_examples < 1:
        raise ValueError(f"test_examples must be >= 1, got {test_examples}")
    if isinstance(task, LiteTask):
        return load_lite_task(task, image_size, test_examples)
    if data_dir is None:
        raise ValueError("VTAB-1k tasks need a data directory")
    return load_vtab_task(task, data_dir, image_size, test_examples)
