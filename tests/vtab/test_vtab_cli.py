"""`sparsevision vtab` end to end: vtab-lite from a freshly trained checkpoint, VTAB-1k tasks missing (reported with
how to get them, never skipped silently) and a local folder-format task found, run and averaged."""
import dataclasses
import json

import numpy as np
import pytest

from sparsevision.cli import main
from sparsevision.train import apply_overrides, get_preset, train
from sparsevision.vtab import VTAB_TASKS, select_tasks
from sparsevision.vtab.export import write_task

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vtab") / "run"
    config = apply_overrides(get_preset("test"), ["steps=3", "eval_every=0", "checkpoint_every=0"])
    train(dataclasses.replace(config, out_dir=str(out)), progress=False)
    return out


def _outputs(out_dir, stem):
    report = json.loads((out_dir / f"{stem}.json").read_text())
    assert (out_dir / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
    return report


def test_vtab_lite_end_to_end_fewshot(run_dir, capsys):
    assert main(["vtab", "--model", str(run_dir), "--suite", "vtab-lite", "--mode", "fewshot",
                 "--test-examples", "60", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    report = _outputs(run_dir / "vtab", "vtab-lite_fewshot")  # default --out: <run>/vtab
    names = ["digits", "textures", "dsprites_location", "dsprites_orientation", "counting", "dsprites_shape"]
    assert [t["name"] for t in report["tasks"]] == names and report["missing"] == []
    for name in names:
        assert name in table
    for task in report["tasks"]:
        assert task["sizes"] == {"train": 800, "val": 200, "final_train": 1000, "test": 60}
        assert 0.0 <= task["accuracy"] <= 1.0 and "l2" in task["choice"]
    accs = {t["name"]: t["accuracy"] for t in report["tasks"]}
    assert report["groups"]["natural"]["mean"] == pytest.approx((accs["digits"] + accs["textures"]) / 2)
    assert report["overall"]["mean"] == pytest.approx(sum(accs.values()) / 6)
    assert report["groups"]["specialized"]["total"] == 0 and "no built-in task" in report["groups"]["specialized"]["note"]
    assert report["overall"]["partial"] is False and report["settings"]["protocol"]["test"] == 60
    assert accs["digits"] > 0.3  # chance is 0.1


def test_missing_tasks_are_reported_with_instructions(run_dir, tmp_path, capsys):
    empty = tmp_path / "no_data"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["vtab", "--model", str(run_dir), "--data-dir", str(empty), "--mode", "fewshot",
                 "--out", str(out)]) == 1  # nothing could run
    captured = capsys.readouterr()
    report = _outputs(out, "vtab-1k_fewshot")
    assert [m["name"] for m in report["missing"]] == [t.name for t in VTAB_TASKS]
    assert report["tasks"] == [] and report["overall"] == {"mean": None, "present": 0, "total": 19,
                                                           "partial": True, "note": ""}
    assert "19 task(s) missing" in captured.out and "--suite vtab-lite" in captured.err
    for task in VTAB_TASKS:
        assert f"python -m sparsevision.vtab.export --tasks {task.name} --data-dir {empty}" in captured.out
        assert f"{task.name}: no folder {empty / task.name}" in captured.out
    assert captured.out.count("manual download first") == 2  # resisc45 and retinopathy
    resisc = next(m for m in report["missing"] if m["name"] == "resisc45")
    assert "NWPU-RESISC45" in resisc["instructions"]


def _fake_split(n, num_classes, rng):
    """Images whose class is their brightness: 8x8 px grey levels far apart, with a little noise."""
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    for label in labels:
        level = 40 + 170 * label / max(1, num_classes - 1)
        yield np.clip(level + rng.normal(0, 8, (8, 8, 3)), 0, 255).astype(np.uint8), int(label)


def test_local_folder_task_is_found_and_run(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "vtab_data"
    (camelyon,) = select_tasks("vtab-1k", "patch_camelyon")
    write_task(camelyon, data_dir, {"train": _fake_split(800, 2, rng), "val": _fake_split(200, 2, rng),
                                    "test": _fake_split(120, 2, rng)})
    record = json.loads((data_dir / "patch_camelyon" / "vtab_export.json").read_text())
    assert record["counts"] == {"train": 800, "val": 200, "test": 120}
    assert sorted(p.name for p in (data_dir / "patch_camelyon" / "test").iterdir()) == ["000", "001"]
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_task(camelyon, data_dir, {})
    (dtd,) = select_tasks("vtab-1k", "dtd")  # present but too small: reported, not skipped silently
    write_task(dtd, data_dir, {"train": _fake_split(10, 47, rng), "val": _fake_split(4, 47, rng),
                               "test": _fake_split(5, 47, rng)})
    out = tmp_path / "out"
    assert main(["vtab", "--model", str(run_dir), "--data-dir", str(data_dir), "--tasks",
                 "dtd,patch_camelyon,eurosat", "--mode", "fewshot", "--out", str(out), "--test-examples", "100"]) == 0
    table = capsys.readouterr().out
    report = _outputs(out, "vtab-1k_fewshot")
    (task,) = report["tasks"]
    assert task["name"] == "patch_camelyon" and task["num_classes"] == 2
    assert task["sizes"] == {"train": 800, "val": 200, "final_train": 1000, "test": 100}
    assert any("test capped" in note for note in task["notes"])
    assert task["accuracy"] > 0.9  # brightness separates the two fake classes
    missing = {m["name"]: m["reason"] for m in report["missing"]}
    assert set(missing) == {"dtd", "eurosat"}
    assert "holds 10 images but the protocol needs 800" in missing["dtd"]
    assert report["groups"]["specialized"] == {"mean": task["accuracy"], "present": 1, "total": 2, "partial": True,
                                               "note": ""}
    assert report["groups"]["natural"]["mean"] is None and report["overall"]["partial"] is True
    assert "MISSING" in table and "1/3 tasks, partial" in table


def test_finetune_mode_sweeps_lr_on_val200_then_runs_on_1000(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["vtab", "--model", str(run_dir), "--suite", "vtab-lite", "--tasks", "dsprites_shape", "--mode",
                 "finetune", "--steps-scale", "0.01", "--batch-size", "32", "--lr", "0.003,0.01",
                 "--test-examples", "50", "--out", str(out)]) == 0
    report = _outputs(out, "vtab-lite_finetune")
    (task,) = report["tasks"]
    per_lr = task["choice"]["val_accuracy_per_lr"]
    assert set(per_lr) == {"0.003", "0.01"}
    best = max(per_lr.values())
    assert task["choice"]["lr"] == next(float(lr) for lr, acc in per_lr.items() if acc == best)  # first of ties
    assert task["val_accuracy"] == best and task["details"]["lr"] == task["choice"]["lr"]
    assert task["details"]["steps"] == 5  # HyperRule's 500 steps for 1000 examples, x0.01
    assert task["sizes"]["final_train"] == 1000 and 0.0 <= task["accuracy"] <= 1.0
    assert report["settings"]["mode"] == "finetune" and report["settings"]["lrs"] == [0.003, 0.01]
    assert "dsprites_shape" in capsys.readouterr().out


def test_finetune_adapts_a_fresh_copy_per_task(run_dir):
    import torch

    from sparsevision.models.loading import load_model
    from sparsevision.vtab import AdaptSettings, run_suite

    model, _ = load_model(str(run_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_suite(model, "vtab-lite", tasks="dsprites_shape", test_examples=30, progress=False,
                       settings=AdaptSettings(mode="finetune", steps_scale=0.01, batch_size=32))
    assert result.tasks[0].val_accuracy is None and result.tasks[0].choice == {}  # one lr: nothing to choose
    assert model.head.out_features == 10  # the pre-trained head, not the task's 3 classes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
