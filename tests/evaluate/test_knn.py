"""kNN against scikit-learn's brute-force KNeighborsClassifier, leave-one-out against refitting without the point,
and the documented tie / weighting rules on hand-made examples."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from sparsevision.evaluate.knn import knn_accuracy, knn_loo_accuracy, knn_predict

SK_METRIC = {"cosine": "cosine", "l2": "euclidean"}


def blobs(seed, n, d=6, num_classes=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    centers = np.random.default_rng(99).normal(size=(num_classes, d))
    return centers[y] + 0.9 * rng.normal(size=(n, d)), y


def sklearn_knn(metric, k, weights):
    return KNeighborsClassifier(n_neighbors=k, metric=SK_METRIC[metric], algorithm="brute", weights=weights)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 5])
def test_knn_predict_matches_sklearn_two_classes(metric, weights, k):
    # Two classes and odd k: no vote ties, and continuous data has no distance ties.
    x, y = blobs(0, 80)
    q, qy = blobs(1, 37)
    ref = sklearn_knn(metric, k, weights).fit(x, y).predict(q)
    for chunk in (2 ** 25, 3 * len(x) + 1):  # one chunk, and chunks of 3 queries
        got = knn_predict(x, y, q, k=k, metric=metric, weights=weights, max_chunk_elements=chunk)
        np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int64
    assert knn_accuracy(torch.tensor(x), torch.tensor(y), q, qy, k=k, metric=metric,
                        weights=weights) == pytest.approx(np.mean(ref == qy))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_predict_matches_sklearn_many_classes_where_votes_are_untied(metric):
    x, y = blobs(2, 120, num_classes=5)
    q, _ = blobs(3, 60, num_classes=5)
    model = sklearn_knn(metric, 6, "uniform").fit(x, y)
    nb = model.kneighbors(q, return_distance=False)
    counts = np.stack([np.bincount(y[row], minlength=5) for row in nb])
    untied = (counts == counts.max(1, keepdims=True)).sum(1) == 1
    assert untied.sum() > 30
    got = knn_predict(x.astype(np.float32), y, q.astype(np.float32), k=6, metric=metric)
    np.testing.assert_array_equal(got[untied], model.predict(q)[untied])


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("k", [1, 3])
def test_leave_one_out_matches_a_numpy_loop_without_each_point(metric, k):
    x, y = blobs(4, 41)
    x[7], y[7] = x[3], y[3]  # a same-label duplicate: the distance tie it makes cannot change any prediction
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    correct = 0
    for i in range(len(x)):
        others = np.flatnonzero(np.arange(len(x)) != i)
        if metric == "cosine":
            dist = 1 - unit(x[others]) @ unit(x[i])
        else:
            dist = np.linalg.norm(x[others] - x[i], axis=1)
        correct += np.argmax(np.bincount(y[others][np.argsort(dist)[:k]], minlength=2)) == y[i]
    for chunk in (2 ** 25, 2 * len(x) + 3):
        assert knn_loo_accuracy(x, y, k=k, metric=metric, max_chunk_elements=chunk) == pytest.approx(correct / len(x))


def test_leave_one_out_excludes_by_index_so_duplicates_vote():
    x = np.array([[0.0], [0.0], [5.0], [6.0], [7.0]])
    y = np.array([1, 1, 0, 0, 0])
    assert knn_loo_accuracy(x, y, k=1, metric="l2") == 1.0


def test_vote_ties_go_to_the_class_of_the_nearest_tied_neighbour():
    train = np.array([[1.0], [2.0], [3.0], [4.0], [10.0]])
    labels = np.array([2, 0, 0, 2, 1])
    query = np.array([[0.0], [10.5]])
    # k=2: {2, 0} tie -> 2 (its neighbour at 1.0 is nearer); k=4: 2-2 tie, 2 again (scikit-learn would say 0).
    np.testing.assert_array_equal(knn_predict(train, labels, query, k=2, metric="l2"), [2, 1])
    np.testing.assert_array_equal(knn_predict(train, labels, query[:1], k=4, metric="l2"), [2])
    # Distance weighting breaks the k=4 tie by 1/d: class 2 gets 1 + 1/4, class 0 gets 1/2 + 1/3.
    np.testing.assert_array_equal(knn_predict(train, labels, query[:1], k=4, metric="l2", weights="distance"), [2])
    # A query on top of a training point: only zero-distance neighbours vote.
    np.testing.assert_array_equal(knn_predict(train, labels, [[3.0]], k=5, metric="l2", weights="distance"), [0])


def test_exp_weights_follow_the_dino_formula():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    q = rng.normal(size=(25, 4))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    sim = unit(q) @ unit(x).T
    expected = []
    for row in sim:
        top = np.argsort(-row)[:7]
        votes = np.zeros(3)
        np.add.at(votes, y[top], np.exp(row[top] / 0.5))
        expected.append(np.argmax(votes))
    got = knn_predict(x, y, q, k=7, metric="cosine", weights="exp", temperature=0.5)
    np.testing.assert_array_equal(got, expected)


def test_knn_errors():
    x, y = blobs(0, 10)
    with pytest.raises(ValueError, match="metric"):
        knn_predict(x, y, x, k=1, metric="manhattan")
    with pytest.raises(ValueError, match="weights"):
        knn_predict(x, y, x, k=1, weights="rank")
    with pytest.raises(ValueError, match="k must be between 1 and 10"):
        knn_predict(x, y, x, k=11)
    with pytest.raises(ValueError, match="k must be between 1 and 9"):
        knn_loo_accuracy(x, y, k=10)
    with pytest.raises(ValueError, match="query_feats have dim 6 but train_feats have 3"):
        knn_predict(x[:, :3], y, x, k=1)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, y[:4], x, k=1)
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(np.full((3, 2), np.nan), [0, 1, 0], x[:, :2], k=1)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x, y, x, k=1, weights="exp", temperature=0.0)
