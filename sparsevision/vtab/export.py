"""Write VTAB-1k tasks from tensorflow-datasets into the folder layout `sparsevision vtab` reads.

Run on a machine with internet (tfds downloads and prepares each dataset; resisc45 and retinopathy need a manual
download first, see `sparsevision vtab --suite vtab-1k` or tasks.py), then copy DATA_DIR to the machine that runs
the benchmark:

    pip install tensorflow tensorflow-datasets
    python -m sparsevision.vtab.export --data-dir DATA_DIR [--tasks cifar100,dtd] [--tfds-dir TFDS_DIR]

For each task it writes DATA_DIR/<task>/train/ (train800), val/ (val200) and test/ (the task's test split), one
sub-folder per class named by the zero-padded label id (so folder order is label order), one PNG per example in the
order tfds returns it, and vtab_export.json recording the tfds builder and split expressions. Labels are derived as
task_adaptation derives them (`LABEL_RULES`). A task is written under a temporary name and renamed when complete,
so an interrupted export never looks like a finished one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .tasks import VTAB_TASKS, VtabTask, default_data_dir, select_tasks

# CLEVR closest-object distance: bins of the smallest pixel_coords depth (task_adaptation/data/clevr.py).
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
# KITTI closest-vehicle distance: bins of the nearest Car / Van / Truck depth in metres, "no vehicle" = 1000 m
# falls in the last bin (task_adaptation/data/kitti.py).
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
KITTI_VEHICLE_TYPES = 3  # tfds kitti object types 0, 1, 2 = Car, Van, Truck


def _bin(value: float, thresholds) -> int:
    """Index of the last threshold strictly below value (task_adaptation: max(where(thrs - value < 0)))."""
    return int(np.flatnonzero(np.asarray(thresholds) < value).max())


def _clevr_distance(ex) -> int:
    return _bin(float(np.min(np.asarray(ex["objects"]["pixel_coords"])[:, 2])), CLEVR_DISTANCE_THRESHOLDS)


def _kitti_distance(ex) -> int:
    objects = ex["objects"]
    depth = np.asarray(objects["location"], dtype=np.float64).reshape(-1, 3)[:, 2]
    vehicles = depth[np.asarray(objects["type"]) < KITTI_VEHICLE_TYPES]
    return _bin(float(np.min(np.append(vehicles, 1000.0))), KITTI_DISTANCE_THRESHOLDS)


LABEL_RULES: dict[str, Callable[[dict], int]] = {
    "label": lambda ex: int(ex["label"]),
    "label_azimuth": lambda ex: int(ex["label_azimuth"]),
    "label_elevation": lambda ex: int(ex["label_elevation"]),
    # dSprites: 32 x positions / 40 orientations grouped into 16 classes, label = floor(index / (original / 16)).
    "dsprites_x_position_16": lambda ex: int(np.floor(int(ex["label_x_position"]) / (32 / 16))),
    "dsprites_orientation_16": lambda ex: int(np.floor(int(ex["label_orientation"]) / (40 / 16))),
    "clevr_count_all": lambda ex: len(ex["objects"]["size"]) - 3,  # 3..10 objects -> 0..7
    "clevr_closest_object_distance": _clevr_distance,
    "kitti_closest_vehicle_distance": _kitti_distance,
}


def to_rgb_uint8(image: np.ndarray, binary: bool = False) -> np.ndarray:
    """HxW, HxWx1 or HxWx3 -> HxWx3 uint8; binary (dSprites' 0/1 masks) scaled to 0/255."""
    image = np.asarray(image)
    if binary:
        image = image.astype(np.uint16) * 255
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_split(examples: Iterable[tuple[np.ndarray, int]], out_dir: Path, num_classes: int) -> int:
    """Write (uint8 image, label) pairs as out_dir/<label:03d>/<index:06d>.png; returns how many."""
    from PIL import Image

    # Every class gets a folder, even one with no example in this split, so folder index = label everywhere.
    for label in range(num_classes):
        (out_dir / f"{label:03d}").mkdir(parents=True, exist_ok=True)
    count = 0
    for index, (image, label) in enumerate(examples):
        if not 0 <= int(label) < num_classes:
            raise ValueError(f"label {label} of example {index} is outside 0..{num_classes - 1}")
        Image.fromarray(to_rgb_uint8(image)).save(out_dir / f"{int(label):03d}" / f"{index:06d}.png", format="PNG")
        count += 1
    return count


def write_task(task: VtabTask, data_dir, splits: dict[str, Iterable[tuple[np.ndarray, int]]],
               source: dict | None = None, overwrite: bool = False) -> Path:
    """Write a task's train / val / test examples into data_dir/<task>, atomically (temp folder + rename)."""
    final = task.folder(data_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{task.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        counts = {split: write_split(splits[split], partial / split, task.num_classes)
                  for split in ("train", "val", "test")}
        record = {"task": task.name, "num_classes": task.num_classes, "counts": counts, **(source or {})}
        (partial / "vtab_export.json").write_text(json.dumps(record, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def _tfds_examples(builder, expression: str, task: VtabTask):
    import tensorflow_datasets as tfds

    label_of = LABEL_RULES[task.label]
    binary = task.tfds_name.startswith("dsprites")
    for ex in tfds.as_numpy(builder.as_dataset(split=expression, shuffle_files=False)):
        yield to_rgb_uint8(ex["image"], binary=binary), label_of(ex)


def export_task(task: VtabTask, data_dir, tfds_dir: str | None = None, overwrite: bool = False) -> Path:
    """Download / prepare the task with tfds and write its VTAB-1k splits (needs tensorflow-datasets, internet)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("exporting VTAB tasks needs tensorflow-datasets: pip install tensorflow "
                          "tensorflow-datasets") from err
    builder = tfds.builder(task.tfds_name, data_dir=tfds_dir)
    builder.download_and_prepare()
    expressions = task.splits.expressions(builder.info.splits["train"].num_examples)
    splits = {"train": _tfds_examples(builder, expressions["train800"], task),
              "val": _tfds_examples(builder, expressions["val200"], task),
              "test": _tfds_examples(builder, expressions["test"], task)}
    source = {"tfds_name": task.tfds_name, "tfds_version": str(builder.info.version), "splits": expressions}
    return write_task(task, data_dir, splits, source, overwrite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsevision.vtab.export", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help=f"where to write the tasks (default: {default_data_dir()})")
    parser.add_argument("--tasks", default=None, help=f"comma-separated (default: all 19: "
                                                      f"{', '.join(t.name for t in VTAB_TASKS)})")
    parser.add_argument("--tfds-dir", default=None, help="tensorflow-datasets data_dir (default: tfds's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace tasks already exported")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    failed = []
    for task in select_tasks("vtab-1k", args.tasks):
        try:
            print(f"{task.name}: wrote {export_task(task, data_dir, args.tfds_dir, args.overwrite)}")
        except Exception as err:  # keep going: one manual-download task must not stop the others
            failed.append(task.name)
            print(f"{task.name}: FAILED: {type(err).__name__}: {err}")
            if task.manual:
                print(f"  {task.name} needs a manual download first: {task.manual}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
