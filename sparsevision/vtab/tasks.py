"""The 19 VTAB-1k tasks (Zhai et al. 2019, "A Large-scale Study of Representation Learning with the Visual Task
Adaptation Benchmark") as data, and the vtab-lite suite of built-in generated tasks that stands in for them offline.

VTAB-1k. Each task has 1000 training examples: `train800` (the first 800 of its train split) for adapting, `val200`
(200 examples of its validation split) for choices such as the learning rate, then `train800val200` (the two
together) for the final run, and its full test split for the reported accuracy. Which tfds splits those are comes
from google-research/task_adaptation (`task_adaptation/data/*.py`) and is encoded in `TfdsSplits` below:

* datasets with their own validation split (dtd, flowers102, sun397, patch_camelyon, retinopathy, dmlab, kitti):
  val200 = `validation[:200]`, test = `test`;
* datasets with train and test only (caltech101, cifar100, pets, svhn, clevr): validation is the tail of train
  from `train_percent` (90%, or 80% for pets), val200 is the first 200 of that tail; test = `test` (clevr:
  tfds `validation`, as CLEVR's test set has no labels);
* datasets with one split (resisc45, eurosat: 60/20/20; dsprites: 80/10/10): train | val | test are consecutive
  slices of tfds `train`;
* smallnorb: val200 = `test[:200]` and test = `test[50%:]` (its test set is halved into val and test).

Local data. This package never downloads. A task is found in `DATA_DIR/<task>/` laid out for the `folder:` loader
(`sparsevision.data.folder`): `DATA_DIR/<task>/{train,val,test}/<class>/<image>`, where train/ holds the task's
train800, val/ its val200 and test/ its test split. `python -m sparsevision.vtab.export --tasks NAMES
--data-dir DATA_DIR` writes exactly that from tensorflow-datasets on a machine with internet (class folders are
zero-padded label ids, so folder order is label order). Folders made another way work too: a train/ (val/) with
more than 800 (200) images is subsampled with a fixed seed and the result is flagged as not the official split.
DATA_DIR is `--data-dir`, else $SPARSEVISION_VTAB_DIR, else ~/.cache/sparsevision/vtab.

vtab-lite. The built-in generated tasks and scikit-learn digits, same protocol (first 800 of the built-in train
split, first 200 of its val split, except digits whose val split has 179 images, so its val200 is train[800:1000];
test = the first `LITE_TEST_EXAMPLES` of the test split, all 359 for digits). No built-in task resembles the
specialized group (remote sensing, medical images), so vtab-lite has no specialized task and says so in its report.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

GROUPS = ("natural", "specialized", "structured")
TRAIN_EXAMPLES, VAL_EXAMPLES = 800, 200
FINAL_TRAIN_EXAMPLES = TRAIN_EXAMPLES + VAL_EXAMPLES  # "VTAB-1k": the 1000 examples of the final run
LITE_TEST_EXAMPLES = 1000
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "sparsevision", "vtab")
DATA_DIR_ENV = "SPARSEVISION_VTAB_DIR"
SUITES = ("vtab-1k", "vtab-lite")


@dataclass(frozen=True)
class TfdsSplits:
    """Where train800 / val200 / test lie in a tfds dataset (task_adaptation's `tfds_splits`).

    val_split: the tfds split val200 is the head of ("validation", "test"), or "train" when validation is carved
    from train starting at `train_percent` percent. test_split: a tfds split expression, or None when test is the
    rest of train after train_percent% + val_percent% (each count rounded down separately, as task_adaptation does).
    """
    val_split: str = "validation"
    test_split: str | None = "test"
    train_percent: int | None = None
    val_percent: int | None = None

    def expressions(self, num_train: int) -> dict[str, str]:
        """tfds split strings of train800 / val200 / train800val200 / test, given the size of tfds `train`."""
        n, v = TRAIN_EXAMPLES, VAL_EXAMPLES
        if self.val_split == "train":
            start = self.train_percent * num_train // 100
            val = f"train[{start}:{start + v}]"
        else:
            val = f"{self.val_split}[:{v}]"
        if self.test_split is None:
            test = f"train[{self.train_percent * num_train // 100 + self.val_percent * num_train // 100}:]"
        else:
            test = self.test_split
        return {"train800": f"train[:{n}]", "val200": val, "train800val200": f"train[:{n}]+{val}", "test": test}


@dataclass(frozen=True)
class VtabTask:
    name: str
    group: str
    num_classes: int
    tfds_name: str  # builder name, config and version pattern as task_adaptation loads it
    label: str  # how the label is read from a tfds example (see export.LABEL_RULES)
    splits: TfdsSplits
    manual: str = ""  # what a user must download by hand before tfds can prepare the data
    note: str = ""

    def folder(self, data_dir: str | os.PathLike) -> Path:
        return Path(data_dir).expanduser() / self.name

    def instructions(self, data_dir: str | os.PathLike) -> str:
        """How to get this task into data_dir, on a machine with internet, then copied here."""
        lines = [f"pip install tensorflow tensorflow-datasets && "
                 f"python -m sparsevision.vtab.export --tasks {self.name} --data-dir {data_dir}",
                 f"(tfds builder {self.tfds_name}; then copy {self.folder(data_dir)} to this machine)"]
        if self.manual:
            lines.append(f"manual download first: {self.manual}")
        return "\n".join(lines)


_NATIVE = TfdsSplits()  # train / validation / test of tfds
_TAIL90 = TfdsSplits(val_split="train", train_percent=90)
_TFDS_MANUAL_DIR = "~/tensorflow_datasets/downloads/manual/"

VTAB_TASKS: tuple[VtabTask, ...] = (
    # natural
    VtabTask("caltech101", "natural", 102, "caltech101:3.*.*", "label", _TAIL90),
    VtabTask("cifar100", "natural", 100, "cifar100:3.*.*", "label", _TAIL90),
    VtabTask("dtd", "natural", 47, "dtd:3.*.*", "label", _NATIVE),
    VtabTask("flowers102", "natural", 102, "oxford_flowers102:2.*.*", "label", _NATIVE),
    VtabTask("pets", "natural", 37, "oxford_iiit_pet:3.*.*", "label",
             TfdsSplits(val_split="train", train_percent=80)),
    VtabTask("sun397", "natural", 397, "sun397/tfds:4.*.*", "label", _NATIVE,
             note="large download (tens of GB) prepared by tfds"),
    VtabTask("svhn", "natural", 10, "svhn_cropped:3.*.*", "label", _TAIL90),
    # specialized
    VtabTask("patch_camelyon", "specialized", 2, "patch_camelyon:2.*.*", "label", _NATIVE),
    VtabTask("eurosat", "specialized", 10, "eurosat/rgb:2.*.*", "label",
             TfdsSplits(val_split="train", test_split=None, train_percent=60, val_percent=20)),
    VtabTask("resisc45", "specialized", 45, "resisc45:3.*.*", "label",
             TfdsSplits(val_split="train", test_split=None, train_percent=60, val_percent=20),
             manual=f"NWPU-RESISC45.rar from the dataset's OneDrive link (see the tfds catalog page for resisc45), "
                    f"extracted into {_TFDS_MANUAL_DIR}"),
    VtabTask("retinopathy", "specialized", 5, "diabetic_retinopathy_detection/btgraham-300:3.*.*", "label",
             _NATIVE, manual=f"the Kaggle 'diabetic-retinopathy-detection' competition files (train/test images, "
                             f"trainLabels.csv, retinopathy_solution.csv) unpacked into {_TFDS_MANUAL_DIR} as the "
                             f"tfds catalog page for diabetic_retinopathy_detection describes"),
    # structured
    VtabTask("clevr_count", "structured", 8, "clevr:3.*.*", "clevr_count_all",
             TfdsSplits(val_split="train", test_split="validation", train_percent=90)),
    VtabTask("clevr_distance", "structured", 6, "clevr:3.*.*", "clevr_closest_object_distance",
             TfdsSplits(val_split="train", test_split="validation", train_percent=90)),
    VtabTask("dmlab", "structured", 6, "dmlab:2.0.1", "label", _NATIVE),
    VtabTask("kitti_distance", "structured", 4, "kitti:3.1.0", "kitti_closest_vehicle_distance", _NATIVE,
             note="task_adaptation's kitti(task='closest_vehicle_distance')"),
    VtabTask("dsprites_location", "structured", 16, "dsprites:2.*.*", "dsprites_x_position_16",
             TfdsSplits(val_split="train", test_split=None, train_percent=80, val_percent=10)),
    VtabTask("dsprites_orientation", "structured", 16, "dsprites:2.*.*", "dsprites_orientation_16",
             TfdsSplits(val_split="train", test_split=None, train_percent=80, val_percent=10)),
    VtabTask("smallnorb_azimuth", "structured", 18, "smallnorb:2.*.*", "label_azimuth",
             TfdsSplits(val_split="test", test_split="test[50%:]")),
    VtabTask("smallnorb_elevation", "structured", 9, "smallnorb:2.*.*", "label_elevation",
             TfdsSplits(val_split="test", test_split="test[50%:]")),
)


@dataclass(frozen=True)
class LiteTask:
    """A built-in dataset run under the VTAB-1k protocol; `stands_in_for` names the VTAB task it mimics, if any."""
    name: str
    group: str
    num_classes: int
    dataset: str  # sparsevision.data.build_dataset name
    stands_in_for: str | None
    # (split, start, stop) slices of the built-in splits
    train800: tuple[str, int, int] = ("train", 0, TRAIN_EXAMPLES)
    val200: tuple[str, int, int] = ("val", 0, VAL_EXAMPLES)


LITE_TASKS: tuple[LiteTask, ...] = (
    LiteTask("digits", "natural", 10, "digits", "svhn", val200=("train", TRAIN_EXAMPLES, FINAL_TRAIN_EXAMPLES)),
    LiteTask("textures", "natural", 9, "textures", "dtd"),
    LiteTask("dsprites_location", "structured", 16, "dsprites_location", "dsprites_location"),
    LiteTask("dsprites_orientation", "structured", 16, "dsprites_orientation", "dsprites_orientation"),
    LiteTask("counting", "structured", 8, "counting", "clevr_count"),
    # dSprites shape is no VTAB-1k task; it sits with its structured siblings as an easy sanity check.
    LiteTask("dsprites_shape", "structured", 3, "dsprites_shape", None),
)
LITE_NO_STAND_IN = {"specialized": "no built-in task resembles remote-sensing or medical images"}


def suite_tasks(suite: str) -> tuple:
    if suite == "vtab-1k":
        return VTAB_TASKS
    if suite == "vtab-lite":
        return LITE_TASKS
    raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")


def select_tasks(suite: str, names: str | list[str] | None = None) -> tuple:
    """The suite's tasks, or those named (comma-separated string or list), in the suite's order."""
    tasks = suite_tasks(suite)
    if not names:
        return tasks
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    wanted = [n for n in wanted if n]
    known = {t.name: t for t in tasks}
    if not wanted:  # e.g. --tasks "," : running nothing and reporting "no data" would mislead
        raise ValueError(f"tasks {names!r} names no {suite} task (tasks: {', '.join(known)})")
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown {suite} task {name!r}{hint} (tasks: {', '.join(known)})")
    return tuple(t for t in tasks if t.name in wanted)


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
