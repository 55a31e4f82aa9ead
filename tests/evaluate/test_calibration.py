"""Calibration metrics against numbers computed by hand, tiny numpy loops written from the formulas,
scikit-learn's log_loss, and brute-force averaging over the orders of tied confidences."""
import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from sparsevision.evaluate.calibration import (aurc, brier_score, calibration_report, excess_aurc,
                                               expected_calibration_error, max_calibration_error,
                                               negative_log_likelihood, reliability_bins, risk_coverage_curve,
                                               to_probs, top_label)


def binary(confidences, correct):
    """Two-class probabilities [c, 1 - c] (c >= 0.5, so class 0 is predicted) and labels giving `correct`."""
    c = np.asarray(confidences, dtype=np.float64)
    return np.stack([c, 1 - c], 1), np.where(np.asarray(correct, bool), 0, 1)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# Dyadic confidences so the bin edges i/4 are exact. By hand, 4 equal-width bins:
#   (0.75, 1]:   1.0 right, 0.875 wrong       -> n=2, acc 1/2, conf 0.9375, gap 0.4375
#   (0.5, 0.75]: 0.75, 0.75 right, 0.625 wrong -> n=3, acc 2/3, conf 0.7083.., gap 1/24
#   (0.25, 0.5]: 0.5 wrong                    -> n=1, acc 0,   conf 0.5,    gap 0.5
# ECE = (2 * 0.4375 + 3 / 24 + 0.5) / 6 = 0.25, MCE = 0.5.
# 3 equal-mass bins of 2 (sorted): {0.5 w, 0.625 w} gap 0.5625, {0.75 r, 0.75 r} gap 0.25, {0.875 w, 1 r} gap
# 0.4375 -> ECE = 1.25 / 3.
HAND = binary([1.0, 0.875, 0.75, 0.75, 0.625, 0.5], [1, 0, 1, 1, 0, 0])


def test_ece_and_mce_by_hand():
    probs, labels = HAND
    assert expected_calibration_error(probs, labels, num_bins=4) == pytest.approx(0.25)
    assert max_calibration_error(probs, labels, num_bins=4) == pytest.approx(0.5)
    assert expected_calibration_error(probs, labels, num_bins=3, binning="equal_mass") == pytest.approx(1.25 / 3)
    bins = reliability_bins(probs, labels, num_bins=4)
    assert bins["count"] == [0, 1, 3, 2] and bins["accuracy"][0] is None
    assert bins["lower"] == [0.0, 0.25, 0.5, 0.75] and bins["upper"] == [0.25, 0.5, 0.75, 1.0]
    assert bins["confidence"][2] == pytest.approx(2.125 / 3)
    json.dumps(bins)


def test_ece_is_zero_when_every_confidence_level_is_calibrated():
    # 10 at 0.8 with 8 right, 4 at 0.75 with 3 right, 5 at 0.6 with 3 right: calibrated however they are binned.
    probs, labels = binary([0.8] * 10 + [0.75] * 4 + [0.6] * 5, [1] * 8 + [0] * 2 + [1] * 3 + [0] + [1] * 3 + [0] * 2)
    for bins, binning in [(15, "equal_width"), (1, "equal_width"), (7, "equal_width"), (1, "equal_mass")]:
        assert expected_calibration_error(probs, labels, bins, binning) == pytest.approx(0.0, abs=1e-12)


def ece_loop(probs, labels, num_bins):
    """Straight from the definition: bins (i/B, (i+1)/B], confidence 0 in the first."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for i in range(num_bins):
        lo, hi = i / num_bins, (i + 1) / num_bins
        members = [j for j in range(len(conf)) if lo < conf[j] <= hi or (i == 0 and conf[j] == 0)]
        if members:
            acc = np.mean([pred[j] == labels[j] for j in members])
            total += len(members) / len(conf) * abs(acc - np.mean(conf[members]))
    return total


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_matches_a_loop_on_random_logits(num_bins):
    rng = np.random.default_rng(num_bins)
    logits = rng.normal(size=(300, 5)) * 2
    labels = rng.integers(0, 5, size=300)
    expected = ece_loop(softmax(logits), labels, num_bins)
    assert expected_calibration_error(logits, labels, num_bins) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels),
                                      num_bins) == pytest.approx(expected, abs=1e-5)


def test_nll_matches_sklearn_log_loss_for_probs_and_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)) * 3
    labels = rng.integers(0, 4, size=50)
    probs = softmax(logits)
    ref = log_loss(labels, probs, labels=range(4))
    assert negative_log_likelihood(probs, labels) == pytest.approx(ref, rel=1e-10)
    assert negative_log_likelihood(logits, labels) == pytest.approx(ref, rel=1e-10)
    assert negative_log_likelihood(logits, labels, inputs="logits") == pytest.approx(ref, rel=1e-10)
    # A probability of exactly 0 on the label is clipped at 1e-12 rather than giving infinity.
    assert negative_log_likelihood([[1.0, 0.0]], [1]) == pytest.approx(-np.log(1e-12))


def test_brier_score_matches_the_formula():
    assert brier_score([[0.7, 0.3]], [0]) == pytest.approx(0.09 + 0.09)
    assert brier_score([[0.2, 0.5, 0.3]], [2]) == pytest.approx(0.04 + 0.25 + 0.49)
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(40, 6)), rng.integers(0, 6, size=40)
    p = softmax(logits)
    assert brier_score(logits, labels) == pytest.approx(np.mean(np.sum((p - np.eye(6)[labels]) ** 2, 1)))


def test_risk_coverage_and_aurc_by_hand():
    conf, correct = [0.9, 0.8, 0.7, 0.6], [True, False, True, False]
    coverage, risk = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 2 / 4])
    assert aurc(conf, correct) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 4)
    # The oracle puts both errors last: risks 0, 0, 1/3, 1/2.
    assert excess_aurc(conf, correct) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)
    assert excess_aurc([0.1, 0.9], [True, True]) == 0.0
    # Input order does not matter; only the ranking by confidence does.
    assert aurc(conf[::-1], correct[::-1]) == pytest.approx(aurc(conf, correct))


def untied_curve(conf, correct):
    order = np.argsort(-np.asarray(conf), kind="stable")
    err = 1 - np.asarray(correct, float)[order]
    return np.cumsum(err) / np.arange(1, len(err) + 1)


def test_tied_confidences_average_over_all_orders_of_the_tie():
    conf = np.array([0.9, 0.7, 0.5, 0.7, 0.7, 0.9])
    correct = np.array([1, 0, 0, 1, 1, 0], bool)
    curves = []
    for perm in itertools.permutations(range(len(conf))):
        perm = np.array(perm)
        # Every order of the examples, sorted by confidence with ties kept in that order.
        curves.append(untied_curve(conf[perm], correct[perm]))
    np.testing.assert_allclose(risk_coverage_curve(conf, correct)[1], np.mean(curves, 0), atol=1e-12)


def test_top_label_and_auto_detection():
    logits = np.array([[2.0, 1.0, 0.5], [0.1, 0.1, 3.0]])
    conf, correct = top_label(logits, [0, 1])
    np.testing.assert_allclose(conf, softmax(logits).max(1))
    np.testing.assert_array_equal(correct, [True, False])
    np.testing.assert_allclose(to_probs(softmax(logits)), softmax(logits))
    # Non-negative rows summing to one are read as probabilities unless told otherwise.
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    np.testing.assert_allclose(to_probs(p), p)
    np.testing.assert_allclose(to_probs(p, inputs="logits"), softmax(p))


def test_calibration_report_is_json_and_consistent():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(120, 3)) * 2, rng.integers(0, 3, size=120)
    report = calibration_report(torch.tensor(logits), torch.tensor(labels))
    assert json.loads(json.dumps(report)) == report
    assert report["inputs"] == "logits" and report["num_examples"] == 120 and report["num_classes"] == 3
    p = softmax(logits)
    assert report["accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels))
    assert report["mean_confidence"] == pytest.approx(p.max(1).mean())
    assert report["ece"] == pytest.approx(ece_loop(p, labels, 15))
    assert report["nll"] == pytest.approx(log_loss(labels, p, labels=range(3)))
    assert report["brier"] == pytest.approx(brier_score(p, labels))
    conf, correct = p.max(1), p.argmax(1) == labels
    assert report["aurc"] == pytest.approx(untied_curve(conf, correct).mean())
    from_probs = calibration_report(p, labels)
    assert from_probs["inputs"] == "probs"
    for key in ("ece", "ece_equal_mass", "mce", "nll", "brier", "aurc", "eaurc"):
        assert from_probs[key] == pytest.approx(report[key], abs=1e-9)


def test_calibration_errors():
    probs, labels = HAND
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        brier_score(probs, labels + 1)
    with pytest.raises(ValueError, match="labels must be 1-D with 6"):
        expected_calibration_error(probs, labels[:3])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        negative_log_likelihood(probs[0], labels)
    with pytest.raises(ValueError, match="binning"):
        expected_calibration_error(probs, labels, binning="quantile")
    with pytest.raises(ValueError, match="num_bins"):
        expected_calibration_error(probs, labels, num_bins=0)
    with pytest.raises(ValueError, match="inputs"):
        to_probs(probs, inputs="log_probs")
    with pytest.raises(ValueError, match="probabilities must lie"):
        to_probs(np.array([[2.0, -1.0]]), inputs="probs")
    with pytest.raises(ValueError, match="NaN"):
        calibration_report(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="one length"):
        aurc([0.5, 0.6], [True])
