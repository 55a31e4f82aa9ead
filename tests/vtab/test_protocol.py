"""The VTAB-1k protocol: 800 / 200 / 1000 splits, the paper's averages (also when tasks are missing), and the
fewshot adaptation against a float64 ridge written out here."""
import numpy as np
import pytest
import torch

from sparsevision.models import create_model
from sparsevision.vtab import (AdaptSettings, TaskResult, VTAB_TASKS, load_task, select_tasks, summarize)
from sparsevision.vtab.adapt import ridge_adapt


def _indices(subset):
    return subset.dataset, list(subset.indices)


def test_lite_splits_are_800_200_disjoint_1000_and_deterministic():
    (digits,) = select_tasks("vtab-lite", "digits")
    data = load_task(digits, image_size=16)
    train_src, train_idx = _indices(data.train800)
    val_src, val_idx = _indices(data.val200)
    assert train_idx == list(range(800))  # the first 800 of the built-in train split
    # digits' val split has only 179 images, so val200 is train[800:1000]: same source, disjoint indices
    assert val_src.split == train_src.split == "train" and val_idx == list(range(800, 1000))
    final = data.train800val200
    assert len(final) == 1000 and data.sizes() == {"train": 800, "val": 200, "final_train": 1000, "test": 359}
    # disjoint by content too: no val200 image equals a train800 image
    seen = {train_src.raw(i)[0].tobytes() for i in train_idx}
    assert not any(val_src.raw(i)[0].tobytes() in seen for i in val_idx)
    assert torch.equal(final[999][0], data.val200[199][0]) and torch.equal(final[0][0], data.train800[0][0])

    (shapes,) = select_tasks("vtab-lite", "dsprites_shape")
    a, b = load_task(shapes, image_size=16, test_examples=20), load_task(shapes, image_size=16, test_examples=20)
    assert a.val200.dataset.split == "val" and list(a.val200.indices) == list(range(200))
    assert len(a.test) == 20 and a.test.dataset.split == "test"
    for i in (0, 799):
        assert torch.equal(a.train800[i][0], b.train800[i][0])
    assert [a.test[i][1] for i in range(20)] == [b.test[i][1] for i in range(20)]


def _result(name, acc):
    task = next(t for t in VTAB_TASKS if t.name == name)
    return TaskResult(name, task.group, task.num_classes, acc, None)


def test_group_and_overall_means_by_hand_full_and_partial():
    accs = {t.name: (i + 1) / 20 for i, t in enumerate(VTAB_TASKS)}  # 0.05, 0.10, ..., 0.95 in table order
    groups, overall = summarize([_result(n, a) for n, a in accs.items()], VTAB_TASKS)
    # natural = tasks 1..7, specialized 8..11, structured 12..19 (in twentieths)
    assert groups["natural"].mean == pytest.approx(sum(range(1, 8)) / 7 / 20)
    assert groups["specialized"].mean == pytest.approx(sum(range(8, 12)) / 4 / 20)
    assert groups["structured"].mean == pytest.approx(sum(range(12, 20)) / 8 / 20)
    assert overall.mean == pytest.approx(sum(range(1, 20)) / 19 / 20)  # mean of tasks, not of group means
    assert (overall.present, overall.total, overall.partial) == (19, 19, False)

    present = {"cifar100": 0.5, "dtd": 0.7, "eurosat": 0.9, "dmlab": 0.4}  # the rest missing
    groups, overall = summarize([_result(n, a) for n, a in present.items()], VTAB_TASKS)
    assert groups["natural"].mean == pytest.approx(0.6)
    assert (groups["natural"].present, groups["natural"].total, groups["natural"].partial) == (2, 7, True)
    assert groups["specialized"].mean == pytest.approx(0.9) and groups["specialized"].present == 1
    assert groups["structured"].mean == pytest.approx(0.4) and groups["structured"].total == 8
    assert overall.mean == pytest.approx(2.5 / 4) and (overall.present, overall.total) == (4, 19)
    assert overall.partial

    groups, overall = summarize([], select_tasks("vtab-1k", "dtd,eurosat"))
    assert overall.mean is None and groups["structured"].total == 0 and groups["natural"].partial


def test_fewshot_adaptation_matches_a_float64_ridge_by_hand():
    torch.manual_seed(0)
    model = create_model("vit_tiny_test", num_classes=10).eval()
    (digits,) = select_tasks("vtab-lite", "digits")
    data = load_task(digits, image_size=32, test_examples=150)
    grid = (2.0 ** -3, 1.0, 2.0 ** 4, 2.0 ** 10)
    out = ridge_adapt(model, data, AdaptSettings(mode="fewshot", l2_grid=grid))

    def feats(ds):
        with torch.no_grad():
            x = torch.stack([ds[i][0] for i in range(len(ds))])
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        return f.double().numpy(), np.array([ds[i][1] for i in range(len(ds))])

    def fit(x, y, l2):  # standardise by x's own statistics, bias column of 100, W = (X'X + l2 I)^-1 X'Y
        mean, std = x.mean(0), x.std(0) + 1e-5
        z = np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
        targets = 2.0 * np.eye(10)[y] - 1.0
        w = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ targets)
        return lambda q: np.argmax(np.hstack([(q - mean) / std, np.full((len(q), 1), 100.0)]) @ w, axis=1)

    (xt, yt), (xv, yv), (xs, ys) = feats(data.train800), feats(data.val200), feats(data.test)
    val_acc = [np.mean(fit(xt, yt, l2)(xv) == yv) for l2 in grid]
    best = max(l2 for l2, a in zip(grid, val_acc) if a == max(val_acc))
    assert out.choice == {"l2": best} and out.val_accuracy == pytest.approx(max(val_acc))
    final = fit(np.vstack([xt, xv]), np.concatenate([yt, yv]), best)
    assert out.test_accuracy == pytest.approx(np.mean(final(xs) == ys), abs=1 / 150 + 1e-9)
    assert out.test_accuracy > 0.3  # digits are linearly decodable from random ViT features (chance 0.1)
