"""Calibration and selective-classification metrics of class probabilities, in float64 numpy.

Conventions (every function here follows them):
* inputs: [N, C] probabilities or logits. `inputs="auto"` treats an array as probabilities when it is non-negative
  with rows summing to 1 (within 1e-4), otherwise as logits (softmax applied); say "probs" / "logits" to decide.
* top-label view (Guo et al. 2017): prediction = argmax (first index on ties), confidence = its probability.
* ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|, over non-empty bins. "equal_width" bins are
  (i/B, (i+1)/B] for i = 0..B-1 (edges `np.linspace(0, 1, B + 1)`; confidence 0 goes to the first bin), default
  B = 15 as in Guo et al.; "equal_mass" bins (Nixon et al. 2019, "adaptive") split the examples sorted by
  confidence into B groups whose sizes differ by at most one (`np.array_split`; the larger groups first). MCE is
  the largest |accuracy_b - confidence_b|.
* NLL = mean over examples of -log p(label); from logits via an exact log-softmax, from probabilities with p(label)
  clipped below at `eps` = 1e-12 (so a confidently wrong example costs at most ~27.6 nats, not infinity).
* Brier score = mean over examples of sum over classes (p_c - 1[c = label])^2 (the multiclass form of Brier
  1950, in [0, 2]).
* risk-coverage (El-Yaniv & Wiener 2010; Geifman et al. 2019): examples sorted by confidence, most confident
  first; at coverage i/N (i = 1..N) the risk is the error rate of the i most confident. Examples with equal
  confidence are a group whose order is unknown: inside a group the errors are spread evenly (the expectation
  over all orders of the group), so the curve does not depend on how ties happen to be ordered.
  AURC = (1/N) sum_i risk(i/N), the right Riemann sum of the curve (the mean risk over the N coverage levels);
  E-AURC = AURC minus the AURC of an oracle ranking with the same errors (all correct examples first).
"""
from __future__ import annotations

import numpy as np

INPUT_KINDS = ("auto", "probs", "logits")
BINNINGS = ("equal_width", "equal_mass")
DEFAULT_NUM_BINS = 15
NLL_EPS = 1e-12


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor; numpy has no bfloat16, so go through float64
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _labels(labels, n: int, num_classes: int) -> np.ndarray:
    y = _as_array(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with {n} entries (one per row), got shape {y.shape}")
    if y.size and not np.all(y == np.round(y)):
        raise ValueError("labels must hold integer class ids")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y


def _scores(probs_or_logits) -> np.ndarray:
    x = _as_array(probs_or_logits).astype(np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"probs_or_logits must be a non-empty [N, C] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("probs_or_logits contains NaN or inf")
    return x


def _is_probs(x: np.ndarray) -> bool:
    return bool(x.min() >= 0 and np.allclose(x.sum(1), 1.0, rtol=0, atol=1e-4))


def _log_probs(probs_or_logits, inputs: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(probabilities, log-probabilities or None, kind) from either kind of input."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")
    x = _scores(probs_or_logits)
    kind = ("probs" if _is_probs(x) else "logits") if inputs == "auto" else inputs
    if kind == "probs":
        if x.min() < 0 or x.max() > 1 + 1e-6:
            raise ValueError(f"probabilities must lie in [0, 1], got range [{x.min()}, {x.max()}]")
        return x, None, kind
    shifted = x - x.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return np.exp(logp), logp, kind


def to_probs(probs_or_logits, inputs: str = "auto") -> np.ndarray:
    """[N, C] float64 probabilities (softmax of logits, or the probabilities themselves)."""
    return _log_probs(probs_or_logits, inputs)[0]


def to_log_probs(probs_or_logits, inputs: str = "auto") -> np.ndarray:
    """[N, C] float64 log-probabilities (log-softmax of logits, or the log of the probabilities: log 0 = -inf)."""
    probs, logp, _ = _log_probs(probs_or_logits, inputs)
    if logp is None:
        with np.errstate(divide="ignore"):
            logp = np.log(probs)
    return logp


def top_label(probs_or_logits, labels, inputs: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(confidence [N] float64, correct [N] bool) of the argmax prediction."""
    p = to_probs(probs_or_logits, inputs)
    y = _labels(labels, p.shape[0], p.shape[1])
    pred = np.argmax(p, axis=1)
    return p[np.arange(len(p)), pred], pred == y


def _check_bins(num_bins: int, binning: str) -> None:
    if int(num_bins) < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")


def _bin_groups(confidence: np.ndarray, num_bins: int, binning: str) -> list[np.ndarray]:
    if binning == "equal_width":
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
        return [np.flatnonzero(idx == b) for b in range(num_bins)]
    order = np.argsort(confidence, kind="stable")
    return np.array_split(order, num_bins)


def reliability_bins(probs_or_logits, labels, num_bins: int = DEFAULT_NUM_BINS, binning: str = "equal_width",
                     inputs: str = "auto") -> dict[str, list]:
    """Per-bin {"lower", "upper", "count", "accuracy", "confidence"} lists (accuracy/confidence None if empty).

    Equal-width bins report their fixed edges; equal-mass bins the smallest and largest confidence they hold.
    """
    _check_bins(num_bins, binning)
    conf, correct = top_label(probs_or_logits, labels, inputs)
    out = {"lower": [], "upper": [], "count": [], "accuracy": [], "confidence": []}
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    for b, members in enumerate(_bin_groups(conf, int(num_bins), binning)):
        if binning == "equal_width":
            lo, hi = float(edges[b]), float(edges[b + 1])
        elif members.size:
            lo, hi = float(conf[members].min()), float(conf[members].max())
        else:
            continue  # fewer examples than bins
        out["lower"].append(lo)
        out["upper"].append(hi)
        out["count"].append(int(members.size))
        out["accuracy"].append(float(correct[members].mean()) if members.size else None)
        out["confidence"].append(float(conf[members].mean()) if members.size else None)
    return out


def _calibration_gaps(bins: dict) -> tuple[np.ndarray, np.ndarray]:
    full = [i for i, n in enumerate(bins["count"]) if n]
    counts = np.array([bins["count"][i] for i in full], dtype=np.float64)
    gaps = np.array([abs(bins["accuracy"][i] - bins["confidence"][i]) for i in full])
    return counts, gaps


def expected_calibration_error(probs_or_logits, labels, num_bins: int = DEFAULT_NUM_BINS,
                               binning: str = "equal_width", inputs: str = "auto") -> float:
    """Top-label ECE: bin-count-weighted mean of |accuracy - mean confidence| over the bins."""
    counts, gaps = _calibration_gaps(reliability_bins(probs_or_logits, labels, num_bins, binning, inputs))
    return float((counts * gaps).sum() / counts.sum())


def max_calibration_error(probs_or_logits, labels, num_bins: int = DEFAULT_NUM_BINS,
                          binning: str = "equal_width", inputs: str = "auto") -> float:
    """Largest |accuracy - mean confidence| over the non-empty bins."""
    return float(_calibration_gaps(reliability_bins(probs_or_logits, labels, num_bins, binning, inputs))[1].max())


def negative_log_likelihood(probs_or_logits, labels, inputs: str = "auto", eps: float = NLL_EPS) -> float:
    """Mean -log p(label), in nats."""
    probs, logp, _ = _log_probs(probs_or_logits, inputs)
    y = _labels(labels, probs.shape[0], probs.shape[1])
    rows = np.arange(len(y))
    picked = logp[rows, y] if logp is not None else np.log(np.clip(probs[rows, y], eps, 1.0))
    return float(-picked.mean())


def brier_score(probs_or_logits, labels, inputs: str = "auto") -> float:
    """Mean over examples of the squared error summed over classes against the one-hot label."""
    p = to_probs(probs_or_logits, inputs)
    y = _labels(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(1).mean())


def _sorted_errors(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(_as_array(confidence), dtype=np.float64)
    corr = np.asarray(_as_array(correct))
    if conf.ndim != 1 or corr.shape != conf.shape or conf.size == 0:
        raise ValueError(f"confidence and correct must be non-empty 1-D arrays of one length, got shapes "
                         f"{conf.shape} and {corr.shape}")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidence contains NaN or inf")
    order = np.argsort(-conf, kind="stable")
    return conf[order], 1.0 - corr[order].astype(np.float64)


def risk_coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """(coverage [N], risk [N]): coverage i/N and the error rate of the i most confident, ties averaged."""
    conf, err = _sorted_errors(confidence, correct)
    n = conf.size
    # Tie groups: runs of equal confidence in the sorted order.
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_err = np.add.reduceat(err, starts)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]
    group = np.repeat(np.arange(starts.size), sizes)
    within = np.arange(n) - starts[group] + 1  # 1-based position inside its tie group
    cum_err = before[group] + within * group_err[group] / sizes[group]
    covered = np.arange(1, n + 1)
    return covered / n, cum_err / covered


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve: the mean of the risk over coverages 1/N, 2/N, ..., 1."""
    return float(risk_coverage_curve(confidence, correct)[1].mean())


def excess_aurc(confidence, correct) -> float:
    """AURC minus that of the oracle ranking (every correct example more confident than every error)."""
    corr = np.asarray(_as_array(correct)).astype(bool)
    n, errors = corr.size, int((~corr).sum())
    covered = np.arange(1, n + 1)
    oracle = np.maximum(0, covered - (n - errors)) / covered
    return aurc(confidence, correct) - float(oracle.mean())


def calibration_report(probs_or_logits, labels, num_bins: int = DEFAULT_NUM_BINS, inputs: str = "auto") -> dict:
    """All the metrics above as plain JSON-serialisable numbers."""
    probs, logp, kind = _log_probs(probs_or_logits, inputs)
    source = logp if logp is not None else probs  # logits stay exact for the NLL
    y = _labels(labels, probs.shape[0], probs.shape[1])
    conf, correct = top_label(probs, y, "probs")
    return {
        "num_examples": int(len(y)), "num_classes": int(probs.shape[1]), "inputs": kind, "num_bins": int(num_bins),
        "accuracy": float(correct.mean()), "mean_confidence": float(conf.mean()),
        "ece": expected_calibration_error(probs, y, num_bins, "equal_width", "probs"),
        "ece_equal_mass": expected_calibration_error(probs, y, num_bins, "equal_mass", "probs"),
        "mce": max_calibration_error(probs, y, num_bins, "equal_width", "probs"),
        "nll": negative_log_likelihood(source, y, "logits" if logp is not None else "probs"),
        "brier": brier_score(probs, y, "probs"),
        "aurc": aurc(conf, correct), "eaurc": excess_aurc(conf, correct),
    }
