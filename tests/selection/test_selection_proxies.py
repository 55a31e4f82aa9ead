"""Proxies against independent references (scikit-learn kNN, a numpy ridge solve), declared upstream scores, and
the regret definition on hand-computed pools."""
import json

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from sparsevision.selection.proxies import (check_proxies, holdout_split, knn_proxy, linear_proxy, run_metric,
                                            upstream_scores)
from sparsevision.selection.select import candidate_names, check_candidates, rank, regret


def blobs(seed, n=90, d=5, num_classes=3, noise=1.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    centers = np.random.default_rng(100).normal(size=(num_classes, d)) * 2
    return centers[y] + noise * rng.normal(size=(n, d)), y


@pytest.mark.parametrize("k,metric", [(1, "l2"), (1, "cosine"), (5, "l2")])
def test_knn_loo_proxy_equals_sklearn_leave_one_out(k, metric):
    x, y = blobs(0, num_classes=2 if k > 1 else 3)  # odd k with two classes: no vote ties
    sk_metric = {"l2": "euclidean", "cosine": "cosine"}[metric]
    # kneighbors() without queries gives each training point's neighbours with the point itself left out.
    clf = KNeighborsClassifier(n_neighbors=k, metric=sk_metric, algorithm="brute").fit(x, y)
    neighbours = clf.kneighbors(return_distance=False)
    votes = np.stack([np.bincount(y[row], minlength=3) for row in neighbours])
    correct = int(np.sum(votes.argmax(1) == y))
    got = knn_proxy(torch.tensor(x, dtype=torch.float64), torch.tensor(y), k=k, metric=metric, mode="loo")
    assert got == pytest.approx(correct / len(y))
    assert 0.3 < got < 1.0  # a task neither trivial nor hopeless, so the comparison means something


def test_knn_holdout_proxy_equals_sklearn_fit_on_the_rest():
    x, y = blobs(1)
    fit, held = holdout_split(y, 0.25, seed=3)
    clf = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x[fit], y[fit])
    expected = float(np.mean(clf.predict(x[held]) == y[held]))
    assert knn_proxy(x, y, k=1, metric="l2", mode="holdout", holdout_fraction=0.25, seed=3) == pytest.approx(expected)
    assert knn_proxy(torch.tensor(x), torch.tensor(y), mode="holdout", holdout_fraction=0.25,
                     seed=3) == pytest.approx(expected)


def test_holdout_split_is_stratified_and_disjoint():
    y = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, held = holdout_split(y, 0.2, seed=0)
    assert np.intersect1d(fit, held).size == 0
    assert sorted(np.concatenate([fit, held])) == list(range(len(y)))
    # round(0.2 * n_c), at least 1 and at most n_c - 1; a lone example is only fitted on.
    assert np.bincount(y[held], minlength=4).tolist() == [2, 1, 0, 1]
    assert holdout_split(y, 0.2, seed=0)[1].tolist() == held.tolist()
    assert holdout_split(y, 0.2, seed=1)[1].tolist() != held.tolist()
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(y, 1.5)


def ridge_reference(x_fit, y_fit, x_held, l2, num_classes):
    # Standardise with the fit statistics, append the constant-100 bias feature, solve the normal equations.
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-5
    a = np.c_[(x_fit - mean) / std, np.full(len(x_fit), 100.0)]
    targets = 2.0 * np.eye(num_classes)[y_fit] - 1.0
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
    return np.argmax(np.c_[(x_held - mean) / std, np.full(len(x_held), 100.0)] @ w, axis=1)


def test_linear_proxy_equals_a_ridge_solve_with_the_best_heldout_l2():
    x, y = blobs(2, n=120, d=8)
    grid = [1e-2, 1.0, 1e2, 1e4, 1e6]
    fit, held = holdout_split(y, 0.2, seed=0)
    accs = [float(np.mean(ridge_reference(x[fit], y[fit], x[held], l2, 3) == y[held])) for l2 in grid]
    best = max(accs)
    expected_l2 = max(l2 for l2, a in zip(grid, accs) if a == best)  # ties to the larger l2
    accuracy, l2 = linear_proxy(x, y, 3, l2_grid=grid)
    assert accuracy == pytest.approx(best)
    assert l2 == expected_l2
    assert linear_proxy(x, y, 3, l2_grid=grid[::-1]) == (accuracy, l2)  # grid order does not matter


def test_upstream_scores_from_a_file_by_any_candidate_key(tmp_path):
    specs = [str(tmp_path / "runs" / "a"), "runs/b.safetensors"]
    names = candidate_names(specs)
    assert names == ["a", "b.safetensors"]
    path = tmp_path / "up.json"
    path.write_text(json.dumps({"a": 0.7, "runs/b.safetensors": 0.9, "unused": 1.0}))
    assert upstream_scores(specs, names, scores_file=str(path)) == {"a": 0.7, "b.safetensors": 0.9}
    path.write_text(json.dumps({"a": 0.7}))
    with pytest.raises(ValueError, match="no upstream score for candidate 'runs/b.safetensors'"):
        upstream_scores(specs, names, scores_file=str(path))
    path.write_text(json.dumps({"a": "high", "b.safetensors": 1}))
    with pytest.raises(ValueError, match="'a' must be a finite number"):
        upstream_scores(specs, names, scores_file=str(path))
    with pytest.raises(ValueError, match="needs declared scores"):
        upstream_scores(specs, names)


def test_upstream_score_from_the_run_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    lines = [{"step": 5, "split": "val", "accuracy": 0.5}, {"step": 10, "split": "val", "accuracy": 0.75},
             {"step": 10, "split": "test", "accuracy": 0.6}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert run_metric(str(run), "val.accuracy") == 0.75
    assert run_metric(str(run / "checkpoints" / "step_00000010"), "test.accuracy") == 0.6
    with pytest.raises(ValueError, match="no 'loss' logged for split 'val'"):
        run_metric(str(run), "val.loss")
    with pytest.raises(ValueError, match="SPLIT.KEY"):
        run_metric(str(run), "accuracy")
    with pytest.raises(ValueError, match="not inside a training run"):
        run_metric(str(tmp_path / "elsewhere.safetensors"), "val.accuracy")


def test_regret_by_hand():
    finetuned = {"a": 0.80, "b": 0.90, "c": 0.60, "d": 0.85}
    r = regret(["c", "d", "b", "a"], finetuned, budget=1, strategy="knn")
    assert (r.pick, r.best) == ("c", "b")
    assert r.absolute == pytest.approx(0.30)
    assert r.relative == pytest.approx(0.30 / 0.90)
    r2 = regret(["c", "d", "b", "a"], finetuned, budget=2)  # the better of c and d
    assert r2.pick == "d" and r2.absolute == pytest.approx(0.05) and r2.relative == pytest.approx(0.05 / 0.9)
    r3 = regret(["c", "d", "b", "a"], finetuned, budget=3)
    assert r3.pick == "b" and r3.absolute == 0 and r3.relative == 0
    assert regret(["x", "y"], {"x": 0.0, "y": 0.0}).relative == 0.0
    with pytest.raises(ValueError, match="same candidates"):
        regret(["a", "b"], finetuned)
    with pytest.raises(ValueError, match="budget"):
        regret(["c", "d", "b", "a"], finetuned, budget=5)


def test_rank_and_candidate_checks():
    assert rank({"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.1}) == ["b", "a", "c", "d"]  # ties keep the given order
    with pytest.raises(ValueError, match="finite"):
        rank({"a": float("nan")})
    with pytest.raises(ValueError, match="at least two candidates"):
        check_candidates(["only"])
    with pytest.raises(ValueError, match="more than once"):
        candidate_names(["x", "x"])
    assert candidate_names(["r1/model.safetensors", "r2/model.safetensors"]) == ["r1/model.safetensors",
                                                                                 "r2/model.safetensors"]
    with pytest.raises(ValueError, match="unknown proxy 'magic'"):
        check_proxies(["knn", "magic"])
