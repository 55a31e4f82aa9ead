"""Softmax / sigmoid cross-entropy with label smoothing against float64 loops over the textbook formulas."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsevision.losses.classification import accuracy, sigmoid_xent, smooth_labels, softmax_xent


def _targets(label, k, eps):
    # Szegedy et al. 2016, Sec. 7: q'(k) = (1 - eps) * delta_{k,y} + eps / K.
    return [(1.0 - eps) * (c == label) + eps / k for c in range(k)]


def reference_softmax(logits, labels, eps):
    total = 0.0
    for row, label in zip(logits, labels):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        total += -sum(t * (v - log_z) for t, v in zip(_targets(label, len(row), eps), row))
    return total / len(logits)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_sigmoid(logits, labels, eps):
    """-sum over classes of the binary log-likelihoods, averaged over the batch (big_vision sigmoid_xent)."""
    total = 0.0
    for row, label in zip(logits, labels):
        targets = _targets(label, len(row), eps)
        total += -sum(t * _log_sigmoid(v) + (1 - t) * _log_sigmoid(-v) for t, v in zip(targets, row))
    return total / len(logits)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_losses_match_float64_loops(eps):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(7, 5))
    labels = rng.integers(0, 5, size=7)
    z, y = torch.tensor(logits), torch.tensor(labels)
    assert softmax_xent(z, y, eps).item() == pytest.approx(reference_softmax(logits.tolist(), labels.tolist(), eps),
                                                           rel=1e-12)
    assert sigmoid_xent(z, y, eps).item() == pytest.approx(reference_sigmoid(logits.tolist(), labels.tolist(), eps),
                                                           rel=1e-12)
    # torch's own label-smoothed cross-entropy is a second, independent implementation of the same smoothing.
    assert softmax_xent(z, y, eps).item() == pytest.approx(F.cross_entropy(z, y, label_smoothing=eps).item(),
                                                           rel=1e-12)


def test_sigmoid_sums_over_classes():
    # Zero logits: every class contributes log 2, so the loss is K log 2 (a mean over classes would give log 2).
    z = torch.zeros(3, 10, dtype=torch.float64)
    assert sigmoid_xent(z, torch.tensor([0, 4, 9])).item() == pytest.approx(10 * math.log(2), rel=1e-12)


def test_soft_targets_and_large_logits_are_stable():
    z = torch.tensor([[300.0, -300.0, 0.0]], dtype=torch.float64)
    soft = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    expected = -sum(t * _log_sigmoid(v) + (1 - t) * _log_sigmoid(-v) for t, v in zip([0.5, 0.25, 0.25],
                                                                                       [300.0, -300.0, 0.0]))
    assert sigmoid_xent(z, soft).item() == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(softmax_xent(z, soft).item())
    assert torch.allclose(smooth_labels(torch.tensor([2]), 4, 0.2), torch.tensor([[0.05, 0.05, 0.85, 0.05]]))


def test_half_precision_logits_are_scored_in_float32():
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(4, 6)), dtype=torch.float32).bfloat16()
    y = torch.tensor([0, 1, 2, 3])
    loss = softmax_xent(z, y, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_softmax(z.double().tolist(), y.tolist(), 0.1), rel=1e-6)


def test_accuracy_counts_argmax():
    z = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])
    assert accuracy(z, torch.tensor([0, 1, 1, 0])).item() == 0.5


@pytest.mark.parametrize("labels, eps, message", [
    (torch.tensor([0, 5]), 0.0, "label 5 is out of range for 5 classes"),
    (torch.tensor([0, 1, 2]), 0.0, "differ in batch size"),
    (torch.zeros(2, 4), 0.0, "soft targets must have the logits' shape"),
    (torch.tensor([0, 1]), 1.0, "label_smoothing must be in [0, 1)"),
])
def test_bad_inputs_are_named(labels, eps, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        softmax_xent(torch.zeros(2, 5), labels, eps)
