"""The VTAB-1k task table against the paper / task_adaptation, the tfds split expressions, the vtab-lite table and
the label rules of the exporter, each against values written out by hand."""
import numpy as np
import pytest

from sparsevision.data import build_dataset
from sparsevision.vtab import LITE_TASKS, VTAB_TASKS, select_tasks
from sparsevision.vtab.export import LABEL_RULES

# Zhai et al. 2019, Table 1 / task_adaptation data/*.py: (group, classes).
PAPER = {
    "caltech101": ("natural", 102), "cifar100": ("natural", 100), "dtd": ("natural", 47),
    "flowers102": ("natural", 102), "pets": ("natural", 37), "sun397": ("natural", 397), "svhn": ("natural", 10),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_distance": ("structured", 6), "dmlab": ("structured", 6),
    "kitti_distance": ("structured", 4), "dsprites_location": ("structured", 16),
    "dsprites_orientation": ("structured", 16), "smallnorb_azimuth": ("structured", 18),
    "smallnorb_elevation": ("structured", 9),
}


def test_the_19_tasks_groups_and_class_counts():
    assert len(VTAB_TASKS) == 19 and len({t.name for t in VTAB_TASKS}) == 19
    assert {t.name: (t.group, t.num_classes) for t in VTAB_TASKS} == PAPER
    counts = {g: sum(t.group == g for t in VTAB_TASKS) for g in ("natural", "specialized", "structured")}
    assert counts == {"natural": 7, "specialized": 4, "structured": 8}


@pytest.mark.parametrize("name, num_train, expected", [
    # train and test only: val is the tail of train from 90% (pets: 80%)
    ("cifar100", 50_000, ("train[:800]", "train[45000:45200]", "test")),
    ("pets", 3_680, ("train[:800]", "train[2944:3144]", "test")),
    ("clevr_count", 70_000, ("train[:800]", "train[63000:63200]", "validation")),
    # own validation split
    ("dtd", 1_880, ("train[:800]", "validation[:200]", "test")),
    ("kitti_distance", 6_347, ("train[:800]", "validation[:200]", "test")),
    # one split, 60/20/20 and 80/10/10
    ("resisc45", 31_500, ("train[:800]", "train[18900:19100]", "train[25200:]")),
    ("dsprites_location", 737_280, ("train[:800]", "train[589824:590024]", "train[663552:]")),
    # smallnorb: val from the head of test, test = its second half
    ("smallnorb_elevation", 24_300, ("train[:800]", "test[:200]", "test[50%:]")),
])
def test_tfds_split_expressions(name, num_train, expected):
    (task,) = select_tasks("vtab-1k", name)
    splits = task.splits.expressions(num_train)
    assert (splits["train800"], splits["val200"], splits["test"]) == expected
    assert splits["train800val200"] == f"{expected[0]}+{expected[1]}"


def test_task_selection_keeps_suite_order_and_names_typos():
    assert [t.name for t in select_tasks("vtab-1k", "svhn,dtd")] == ["dtd", "svhn"]
    with pytest.raises(ValueError, match="unknown vtab-1k task 'cifar10'; did you mean cifar100"):
        select_tasks("vtab-1k", "cifar10")
    with pytest.raises(ValueError, match="unknown suite"):
        select_tasks("vtab-2k")


def test_lite_suite_stand_ins_and_class_counts():
    assert [t.name for t in LITE_TASKS] == ["digits", "textures", "dsprites_location", "dsprites_orientation",
                                            "counting", "dsprites_shape"]
    assert {t.name: t.stands_in_for for t in LITE_TASKS} == {
        "digits": "svhn", "textures": "dtd", "dsprites_location": "dsprites_location",
        "dsprites_orientation": "dsprites_orientation", "counting": "clevr_count", "dsprites_shape": None}
    vtab = {t.name: t for t in VTAB_TASKS}
    for task in LITE_TASKS:
        assert task.group != "specialized"  # no honest stand-in exists
        if task.stands_in_for:  # a stand-in sits in the group of the task it mimics
            assert vtab[task.stands_in_for].group == task.group
        assert build_dataset(task.dataset, "test", 8).num_classes == task.num_classes


def test_label_rules_match_task_adaptation_by_hand():
    # dSprites: 32 positions / 40 orientations into 16 classes: floor(i / 2) and floor(i / 2.5)
    assert [LABEL_RULES["dsprites_x_position_16"]({"label_x_position": i}) for i in (0, 1, 2, 31)] == [0, 0, 1, 15]
    assert [LABEL_RULES["dsprites_orientation_16"]({"label_orientation": i}) for i in (0, 2, 3, 5, 39)] == \
        [0, 0, 1, 2, 15]
    # CLEVR count: 3..10 objects -> 0..7
    assert LABEL_RULES["clevr_count_all"]({"objects": {"size": np.zeros(10)}}) == 7
    assert LABEL_RULES["clevr_count_all"]({"objects": {"size": np.zeros(3)}}) == 0
    # CLEVR distance: thresholds 0, 8, 8.5, 9, 9.5, 10, 100 on the nearest object's depth
    clevr = LABEL_RULES["clevr_closest_object_distance"]
    coords = lambda *depths: {"objects": {"pixel_coords": np.array([[10.0, 20.0, d] for d in depths])}}
    assert [clevr(coords(12.0, 8.7)), clevr(coords(7.9)), clevr(coords(9.5)), clevr(coords(11.0, 30.0))] == \
        [2, 0, 3, 5]
    # KITTI: nearest Car/Van/Truck (types 0-2) in bins -100, 8, 20, 999; no vehicle -> 1000 m -> last class
    kitti = LABEL_RULES["kitti_closest_vehicle_distance"]
    scene = lambda types, depths: {"objects": {"type": np.array(types),
                                               "location": np.array([[0.0, 1.0, d] for d in depths])}}
    assert kitti(scene([0, 4, 2], [15.0, 3.0, 25.0])) == 1  # the pedestrian at 3 m does not count
    assert kitti(scene([1], [5.0])) == 0
    assert kitti(scene([2, 0], [40.0, 21.0])) == 2
    assert kitti(scene([4, 5], [3.0, 9.0])) == 3
