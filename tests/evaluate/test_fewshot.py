"""Few-shot ridge evaluation against scikit-learn Ridge and a direct float64 normal-equation solve of the official
recipe (whiten, append a constant 100, +-1 targets), plus the shot sampler and l2 selection."""
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from sparsevision.evaluate.fewshot import (fewshot_eval, fit_linear_probe, pm1_targets, ridge_fit, ridge_l2_search,
                                           sample_shots, select_l2_by_mean_rank)


def official_predict(x_tr, y_tr, x_te, num_classes, l2):
    """The official few-shot classifier written out directly: np.linalg.solve of the primal normal equations."""
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-5
    pad = lambda x: np.concatenate([(x - mean) / std, np.full((len(x), 1), 100.0)], axis=1)
    a = pad(x_tr)
    targets = np.where(np.arange(num_classes)[None, :] == y_tr[:, None], 1.0, -1.0)
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
    return np.argmax(pad(x_te) @ w, axis=1)


@pytest.mark.parametrize("n,d", [(40, 7), (9, 25)])  # primal (N >= D) and dual (D > N) branches
@pytest.mark.parametrize("l2", [1e-3, 0.7, 30.0])
def test_ridge_fit_matches_sklearn(n, d, l2):
    rng = np.random.default_rng(n * 100 + d)
    x = rng.normal(size=(n, d)) + rng.normal(size=d)  # non-centred features
    y = rng.normal(size=(n, 3)) + 2.0
    xq = rng.normal(size=(11, d))
    for bias, fit_intercept in [("center", True), ("none", False)]:
        w, b = ridge_fit(x, y, l2, bias=bias)
        ref = Ridge(alpha=l2, fit_intercept=fit_intercept, solver="svd").fit(x, y)
        np.testing.assert_allclose(xq @ w + b, ref.predict(xq), atol=1e-5, rtol=0)
    # bias="constant" is Ridge without intercept on [x, 100]: the bias column is penalised like the rest.
    w, b = ridge_fit(x, y, l2, bias="constant")
    pad = lambda z: np.concatenate([z, np.full((len(z), 1), 100.0)], axis=1)
    ref = Ridge(alpha=l2, fit_intercept=False, solver="svd").fit(pad(x), y)
    np.testing.assert_allclose(xq @ w + b, ref.predict(pad(xq)), atol=1e-5, rtol=0)


def test_pm1_targets_and_ridge_errors():
    np.testing.assert_array_equal(pm1_targets([2, 0], 3), [[-1, -1, 1], [1, -1, -1]])
    with pytest.raises(ValueError, match="num_classes=2"):
        pm1_targets([0, 2], 2)
    with pytest.raises(ValueError, match="l2"):
        ridge_fit(np.ones((3, 2)), np.ones((3, 1)), 0.0)
    with pytest.raises(ValueError, match="bias"):
        ridge_fit(np.ones((3, 2)), np.ones((3, 1)), 1.0, bias="learned")
    with pytest.raises(ValueError, match="rows"):
        ridge_fit(np.ones((3, 2)), np.ones((4, 1)), 1.0)


@pytest.mark.parametrize("n", [60, 8])
def test_fit_linear_probe_on_raw_features_matches_official_recipe(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 12)) * rng.uniform(0.1, 5, size=12) + rng.normal(size=12)
    y = np.arange(n) % 4
    xq = rng.normal(size=(50, 12)) * 2
    w, b = fit_linear_probe(torch.tensor(x, dtype=torch.float64), torch.tensor(y), 4, l2=2.0)
    np.testing.assert_array_equal(np.argmax(xq @ w + b, 1), official_predict(x, y, xq, 4, 2.0))


def official_sampler(labels, num_classes, seed, k):
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.where(labels == c)[0]) for c in range(num_classes)]
    return np.concatenate([p[:k] for p in perms])


def test_sample_shots_deterministic_exact_counts_nested_and_official():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(5), [30, 12, 40, 9, 20]))
    sets, val = sample_shots(labels, (1, 5, 8), seed=3, val_per_class=1)
    sets2, val2 = sample_shots(labels, (1, 5, 8), seed=3, val_per_class=1)
    for k in (1, 5, 8):
        np.testing.assert_array_equal(sets[k], sets2[k])
        np.testing.assert_array_equal(np.bincount(labels[sets[k]], minlength=5), [k] * 5)
        assert len(set(sets[k].tolist())) == 5 * k
        np.testing.assert_array_equal(sets[k], official_sampler(labels, 5, 3, k))
    assert set(sets[1].tolist()) <= set(sets[5].tolist()) <= set(sets[8].tolist())
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=5), [1] * 5)
    assert not set(val.tolist()) & set(sets[8].tolist())
    # The default validation set is everything not in the largest shot set.
    _, rest = sample_shots(labels, (1, 5, 8), seed=3, val_per_class=None)
    assert sorted(rest.tolist() + sets[8].tolist()) == list(range(len(labels)))
    # An integer val_per_class gives the same validation set whatever shots are asked for.
    np.testing.assert_array_equal(sample_shots(labels, 2, seed=3, val_per_class=1)[1], val)
    assert not np.array_equal(sample_shots(labels, 5, seed=4)[0][5], sets[5])


def test_sample_shots_errors_name_the_short_class():
    labels = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(ValueError, match="class 1: 4"):
        sample_shots(labels, (1, 5))
    with pytest.raises(ValueError, match="class 1: 4"):
        sample_shots(labels, 3, val_per_class=2)
    with pytest.raises(ValueError, match="class 3: 0"):
        sample_shots(labels, 1, num_classes=4)
    with pytest.raises(ValueError, match="shots"):
        sample_shots(labels, 0)


def make_task(seed, num_classes=3, per_class=30, d=10, noise=2.0):
    centers = np.random.default_rng(100).normal(size=(num_classes, d)) * 1.5  # shared by all splits
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), per_class)
    return centers[y] + noise * rng.normal(size=(len(y), d)), y


def test_fewshot_eval_matches_direct_solve_for_every_l2():
    x_pool, y_pool = make_task(1)
    x_pool = x_pool.astype(np.float32).astype(np.float64)  # what the float32 input becomes inside
    x_test, y_test = make_task(2)
    grid = (0.01, 1.0, 100.0, 1e4)
    res = fewshot_eval(x_pool.astype(np.float32), y_pool, x_test, y_test, shots=(2, 5), l2_grid=grid, seed=7)
    json.dumps(res)
    for k in (2, 5):
        idx = official_sampler(y_pool, 3, 7, k)
        rest = np.setdiff1d(np.arange(len(y_pool)), official_sampler(y_pool, 3, 7, 5))
        x_tr = x_pool[idx]
        for i, l2 in enumerate(grid):
            ref_test = np.mean(official_predict(x_tr, y_pool[idx], x_test, 3, l2) == y_test)
            ref_val = np.mean(official_predict(x_tr, y_pool[idx], x_pool[rest], 3, l2) == y_pool[rest])
            assert res[k]["test_accuracy_per_l2"][i] == pytest.approx(ref_test)
            assert res[k]["val_accuracy_per_l2"][i] == pytest.approx(ref_val)
        assert res[k]["num_train"] == 3 * k and res[k]["num_val"] == len(rest)
        best = max(res[k]["val_accuracy_per_l2"])
        assert res[k]["l2"] == max(l2 for l2, a in zip(grid, res[k]["val_accuracy_per_l2"]) if a == best)


def test_l2_selection_picks_the_grid_value_best_on_held_out_data():
    # Validation labels are the predictions of the l2=grid[1] classifier: only that l2 gets them all right.
    x_pool, y_pool = make_task(3, d=30, noise=3.0)
    x_test, y_test = make_task(4, d=30, noise=3.0)
    grid = (1e-4, 3.0, 3e3)
    rng = np.random.default_rng(0)
    x_val = rng.normal(size=(400, 30)) * 3
    idx = official_sampler(y_pool, 3, 0, 4)
    preds = {l2: official_predict(x_pool[idx], y_pool[idx], x_val, 3, l2) for l2 in grid}
    assert all((preds[l2] != preds[grid[1]]).any() for l2 in grid if l2 != grid[1])
    res = fewshot_eval(x_pool, y_pool, x_test, y_test, shots=(4,), l2_grid=grid, val_feats=x_val,
                       val_labels=preds[grid[1]])[4]
    assert res["l2"] == grid[1] and res["val_accuracy"] == 1.0 and res["num_val"] == 400
    ref = np.mean(official_predict(x_pool[idx], y_pool[idx], x_test, 3, grid[1]) == y_test)
    assert res["accuracy"] == pytest.approx(ref)
    # "test" selection: the best test accuracy, ties to the larger l2.
    res = fewshot_eval(x_pool, y_pool, x_test, y_test, shots=(4,), l2_grid=grid, l2_selection="test")[4]
    best = max(res["test_accuracy_per_l2"])
    assert res["accuracy"] == best
    assert res["l2"] == max(l2 for l2, a in zip(grid, res["test_accuracy_per_l2"]) if a == best)


def test_fewshot_eval_errors():
    x, y = make_task(0, per_class=6)
    with pytest.raises(ValueError, match="needs 10 examples per class"):
        fewshot_eval(x, y, x, y, shots=(10,))
    with pytest.raises(ValueError, match="no pool examples are left"):
        fewshot_eval(x, y, x, y, shots=(6,))
    with pytest.raises(ValueError, match="test_feats have dim"):
        fewshot_eval(x, y, x[:, :3], y, shots=(1,))
    with pytest.raises(ValueError, match="train_labels has 17"):
        fewshot_eval(x, y[:17], x, y, shots=(1,))
    with pytest.raises(ValueError, match="l2_selection"):
        fewshot_eval(x, y, x, y, shots=(1,), l2_selection="val")
    with pytest.raises(ValueError, match="test_labels contain class 5"):
        fewshot_eval(x, y, x, np.full(len(y), 5), shots=(1,), num_classes=3)
    assert fewshot_eval(x, y, x, y, shots=(6,), l2_selection="test")[6]["num_val"] == 0


def test_select_l2_by_mean_rank_follows_vmoe_rule():
    grid = [0.1, 1.0, 10.0]
    mk = lambda accs: {5: {"l2_grid": grid, "test_accuracy_per_l2": accs}}
    # Ranks: a -> [0, 2, 1], b -> [1, 0, 2], c -> [0, 2, 1]; means [1/3, 4/3, 4/3] -> first best is 1.0.
    out = select_l2_by_mean_rank({"a": mk([0.1, 0.9, 0.5]), "b": mk([0.5, 0.4, 0.6]), "c": mk([0.2, 0.8, 0.7])})
    assert out == {5: 1.0}
    with pytest.raises(ValueError, match="same l2 grid"):
        select_l2_by_mean_rank({"a": mk([0.1, 0.2, 0.3]), "b": {5: {"l2_grid": [1.0], "test_accuracy_per_l2": [1]}}})


def test_ridge_l2_search_matches_one_fit_per_l2():
    # One eigendecomposition for the grid must equal solving each l2 on its own (folded weights, raw features).
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 7)) * rng.uniform(0.1, 10, 7), rng.integers(0, 3, 60)
    xv, yv = rng.normal(size=(40, 7)) * 3, rng.integers(0, 3, 40)
    grid = [2.0 ** i for i in range(-6, 12, 2)]
    best, accs = ridge_l2_search(x, y, xv, yv, 3, grid)
    expected = []
    for l2 in grid:
        w, b = fit_linear_probe(x, y, 3, l2)
        expected.append(float(np.mean(np.argmax(xv @ w + b, axis=1) == yv)))
    assert accs == pytest.approx(expected)
    assert best == max(l2 for l2, a in zip(grid, expected) if a == max(expected))
