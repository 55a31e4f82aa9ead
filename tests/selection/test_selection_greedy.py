"""Greedy ensemble selection with replacement against brute force over all multisets, a plain float64 loop, and
hand-made pools where the answer is known."""
import itertools
import math

import numpy as np
import pytest
import torch

from sparsevision.selection.greedy import ensemble_probs, greedy_ensemble


def random_pool(seed, num_models=4, n=12, num_classes=3, scale=2.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    logits = [scale * rng.normal(size=(n, num_classes)) for _ in range(num_models)]
    return logits, labels


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def mean_prob_ce(probs, members, labels):
    """Cross-entropy of the average of the members' probabilities, one example at a time."""
    total = 0.0
    for i, y in enumerate(labels):
        p = sum(probs[m][i, y] for m in members) / len(members)
        total -= math.log(p)
    return total / len(labels)


def loop_greedy(probs, labels, size):
    """The textbook algorithm: try every pool model as the next member, keep the best (first on ties)."""
    members, path = [], []
    for _ in range(size):
        losses = [mean_prob_ce(probs, members + [m], labels) for m in range(len(probs))]
        best = min(range(len(probs)), key=lambda m: (losses[m], m))
        members.append(best)
        path.append(losses[best])
    return members, path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_plain_loop(seed):
    logits, labels = random_pool(seed)
    probs = [softmax(x) for x in logits]
    ref_members, ref_path = loop_greedy(probs, labels, 4)
    got = greedy_ensemble(logits, labels, max_members=4, stop_when_worse=False)
    assert got.members == ref_members
    np.testing.assert_allclose(got.loss_path, ref_path, rtol=1e-12)
    np.testing.assert_array_equal(got.counts, np.bincount(ref_members, minlength=len(probs)))
    # Probabilities and torch logits give the same answer as numpy logits.
    same = greedy_ensemble(probs, labels, max_members=4, stop_when_worse=False, inputs="probs")
    torch_in = greedy_ensemble([torch.tensor(x, dtype=torch.float32) for x in logits], torch.tensor(labels),
                               max_members=4, stop_when_worse=False)
    assert same.members == torch_in.members == ref_members


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_greedy_against_brute_force_over_multisets(seed):
    logits, labels = random_pool(seed, num_models=3, n=10)
    probs = [softmax(x) for x in logits]
    got = greedy_ensemble(logits, labels, max_members=4, stop_when_worse=False)
    for size in range(1, 5):
        multisets = list(itertools.combinations_with_replacement(range(3), size))
        losses = {ms: mean_prob_ce(probs, list(ms), labels) for ms in multisets}
        optimum = min(losses.values())
        # Greedy is a heuristic: never better than the optimum over all multisets of its size ...
        assert got.loss_path[size - 1] >= optimum - 1e-12
        # ... its ensemble is one of those multisets, scored the same way ...
        assert losses[tuple(sorted(got.members[:size]))] == pytest.approx(got.loss_path[size - 1], rel=1e-12)
        # ... and each step is the best single extension of the previous ensemble.
        if size > 1:
            prefix = got.members[:size - 1]
            extensions = [losses[tuple(sorted(prefix + [m]))] for m in range(3)]
            assert got.loss_path[size - 1] == pytest.approx(min(extensions), rel=1e-12)
    # The first pick is the single model with the lowest cross-entropy.
    singles = [mean_prob_ce(probs, [m], labels) for m in range(3)]
    assert got.members[0] == int(np.argmin(singles))


def test_greedy_finds_the_optimal_pair_of_complementary_models():
    # Model 0 knows the even examples, model 1 the odd ones, model 2 is uniform. The best pair is {0, 1}
    # (a brute-force check over all multisets of size 2), and greedy finds it with 0 first (it is tied with 1).
    n, c = 8, 2
    labels = np.arange(n) % 2
    p = np.full((3, n, c), 0.5)
    for i in range(n):
        expert = i % 2
        p[expert, i] = [0.05, 0.05]
        p[expert, i, labels[i]] = 0.95
    pool = [p[m] for m in range(3)]
    pairs = {ms: mean_prob_ce(pool, list(ms), labels)
             for ms in itertools.combinations_with_replacement(range(3), 2)}
    assert min(pairs, key=pairs.get) == (0, 1)
    got = greedy_ensemble(pool, labels, max_members=2, inputs="probs")
    assert got.members == [0, 1]
    assert got.loss_path[-1] == pytest.approx(pairs[(0, 1)])
    np.testing.assert_allclose(got.weights, [0.5, 0.5, 0.0])


def test_with_replacement_repeats_a_dominant_model():
    # Model 0 is confident and right; adding the worse model 1 only hurts, so greedy stops after one pick by
    # default, and without stopping it picks model 0 again (replacement) rather than ever adding model 1.
    labels = np.array([0, 1, 0, 1])
    good = np.eye(2)[labels] * 0.9 + 0.05
    bad = np.full((4, 2), 0.5)
    stopped = greedy_ensemble([good, bad], labels, max_members=3, inputs="probs")
    assert stopped.members == [0] and stopped.stopped_early
    full = greedy_ensemble([good, bad], labels, max_members=3, inputs="probs", stop_when_worse=False)
    assert full.members == [0, 0, 0]
    np.testing.assert_allclose(full.weights, [1.0, 0.0])


@pytest.mark.parametrize("seed", range(6))
def test_loss_path_never_increases(seed):
    logits, labels = random_pool(seed, num_models=5, n=30, num_classes=4, scale=3.0)
    got = greedy_ensemble(logits, labels, max_members=8)
    assert all(b < a for a, b in zip(got.loss_path, got.loss_path[1:]))
    assert got.size == len(got.loss_path) <= 8
    assert got.counts.sum() == got.size
    assert got.weights.sum() == pytest.approx(1.0)


def test_ensemble_probs_is_the_weighted_mean_of_softmaxes():
    logits, _ = random_pool(7, num_models=3, n=5)
    got = ensemble_probs(logits, [2, 1, 0])
    expected = (2 * softmax(logits[0]) + softmax(logits[1])) / 3
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bad_input_is_named():
    logits, labels = random_pool(0)
    with pytest.raises(ValueError, match="max_members"):
        greedy_ensemble(logits, labels, max_members=0)
    with pytest.raises(ValueError, match="pool is empty"):
        greedy_ensemble([], labels)
    with pytest.raises(ValueError, match="rows but there are"):
        greedy_ensemble([logits[0][:5]], labels)
    with pytest.raises(ValueError, match="labels must lie"):
        greedy_ensemble(logits, labels + 5)
    with pytest.raises(ValueError, match="one weight per prediction"):
        ensemble_probs(logits, [1.0])
