"""LIMoE entropy losses against hand computation in numpy (float64 loops over tokens and experts)."""
import math

import numpy as np
import pytest
import torch

from sparsevision.moe.entropy import (entropy, global_entropy_loss, local_entropy_loss, marginal_entropy,
                                      threshold_for_experts)


def np_entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def random_probs(shape, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_entropy_known_values():
    # Uniform over E has entropy log E; a one-hot has 0 (0 log 0 = 0, no NaN).
    p = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(entropy(p).numpy(), [math.log(4), 0.0, math.log(2)], atol=1e-12)


def test_local_entropy_matches_loop():
    p = random_probs((3, 5, 4))
    expected = np.mean([np_entropy(p[b, n]) for b in range(3) for n in range(5)])
    got = local_entropy_loss(torch.tensor(p))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.item(), expected, rtol=1e-12)


def test_global_entropy_matches_loop_and_threshold():
    p = random_probs((7, 6), seed=1)
    mean = [sum(p[i, e] for i in range(7)) / 7 for e in range(6)]
    h = np_entropy(mean)
    np.testing.assert_allclose(marginal_entropy(torch.tensor(p)).item(), h, rtol=1e-12)
    np.testing.assert_allclose(global_entropy_loss(torch.tensor(p)).item(), -h, rtol=1e-12)
    # Thresholded: max(0, tau - H). Above and below the entropy.
    np.testing.assert_allclose(global_entropy_loss(torch.tensor(p), threshold=h + 0.3).item(), 0.3, rtol=1e-9)
    assert global_entropy_loss(torch.tensor(p), threshold=h - 0.3).item() == 0.0


def test_mask_drops_tokens():
    p = random_probs((2, 4, 3), seed=2)
    mask = np.array([[True, True, False, False], [True, False, True, False]])
    kept = [p[b, n] for b in range(2) for n in range(4) if mask[b, n]]
    local = np.mean([np_entropy(x) for x in kept])
    mean = [sum(x[e] for x in kept) / len(kept) for e in range(3)]
    tp, tm = torch.tensor(p), torch.tensor(mask)
    np.testing.assert_allclose(local_entropy_loss(tp, tm).item(), local, rtol=1e-12)
    np.testing.assert_allclose(marginal_entropy(tp, tm).item(), np_entropy(mean), rtol=1e-12)


def test_gradients_push_the_right_way():
    # One step of gradient descent on each loss moves the entropies in the paper's intended direction.
    logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    local = local_entropy_loss(logits.softmax(-1))
    local.backward()
    with torch.no_grad():
        after = local_entropy_loss((logits - 0.5 * logits.grad).softmax(-1))
    assert after < local
    logits.grad = None
    glob = global_entropy_loss(logits.softmax(-1))
    glob.backward()
    with torch.no_grad():
        h_after = marginal_entropy((logits - 0.5 * logits.grad).softmax(-1))
    assert h_after > -glob
    assert torch.isfinite(logits.grad).all()


def test_one_hot_gradient_is_finite():
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    local_entropy_loss(logits.softmax(-1)).backward()
    assert torch.isfinite(logits.grad).all()


def test_threshold_for_experts():
    assert threshold_for_experts(4, 8) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="min_experts"):
        threshold_for_experts(9, 8)


def test_errors():
    p = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="mask shape"):
        local_entropy_loss(p, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        local_entropy_loss(p, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        global_entropy_loss(p, threshold=-1.0)
