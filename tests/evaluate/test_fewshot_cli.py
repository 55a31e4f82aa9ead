"""`sparsevision fewshot` end to end: features, ridge per shot count, shared l2 by mean rank, kNN, files."""
import json

import numpy as np
import pytest
import torch

import sparsevision
from sparsevision.cli import main
from sparsevision.data import build_dataset
from sparsevision.evaluate.fewshot import DEFAULT_L2_GRID, fewshot_eval
from sparsevision.train.checkpoint import save_model_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fewshot") / "model.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test"), path, metadata={"model": "vit_tiny_test"})
    return path


def _features(model, task, split, n):
    ds = build_dataset(task, split=split, image_size=32)
    images = torch.stack([ds[i][0] for i in range(n)])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(images), pre_logits=True)
    return feats.numpy(), np.array([ds[i][1] for i in range(n)])


def test_mean_rank_shares_one_l2_per_shot_count(weights, tmp_path):
    out = tmp_path / "out"
    assert main(["fewshot", "--model", str(weights), "--data", "digits,dsprites_shape", "--shots", "1,5",
                 "--l2-selection", "mean-rank", "--max-train-examples", "300", "--max-test-examples", "100",
                 "--knn-k", "5", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "fewshot.json").read_text())
    assert (out / "fewshot.png").stat().st_size > 0
    model = sparsevision.create_model("vit_tiny_test")
    from sparsevision.train.checkpoint import load_model_weights
    load_model_weights(model, weights)
    model.eval()
    per_task = {}
    for task in ("digits", "dsprites_shape"):
        train_x, train_y = _features(model, task, "train", 300)
        test_x, test_y = _features(model, task, "test", 100)
        classes = build_dataset(task, split="train", image_size=32).num_classes
        per_task[task] = fewshot_eval(train_x, train_y, test_x, test_y, shots=(1, 5), num_classes=classes,
                                      l2_selection="test")
    for k in (1, 5):
        # V-MoE's rule, written out: rank the grid within each task by test accuracy, average, take the best.
        ranks = [np.argsort(np.argsort(per_task[t][k]["test_accuracy_per_l2"], kind="stable"), kind="stable")
                 for t in per_task]
        shared = DEFAULT_L2_GRID[int(np.argmax(np.mean(ranks, axis=0)))]
        assert report["shared_l2"][str(k)] == shared
        for entry in report["tasks"]:
            expected = per_task[entry["task"]][k]["test_accuracy_per_l2"][DEFAULT_L2_GRID.index(shared)]
            assert entry["fewshot"][str(k)]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert all(0 <= entry["knn"]["accuracy"] <= 1 for entry in report["tasks"])


def test_bad_arguments_are_named(weights, tmp_path, capsys):
    assert main(["fewshot", "--model", str(weights), "--data", "digits", "--l2-selection", "mean-rank"]) == 1
    assert "at least two tasks" in capsys.readouterr().err
    assert main(["fewshot", "--model", str(weights), "--data", "digits", "--shots", "0,5"]) == 1
    assert "--shots" in capsys.readouterr().err
