"""Top-k (V-MoE) layer vs a float64 per-token loop, in both dispatch paths, with drops, BPR and training noise."""
import math

import numpy as np
import pytest
import torch

from moe_loop_reference import top_k_loop
from sparsevision.moe import MoeMlp

DIM, HIDDEN, EXPERTS = 6, 10, 4
# Every dispatcher computes the same function; "grouped" runs its padded-bmm fallback at these odd sizes and in
# float64 (test_moe_grouped.py drives torch._grouped_mm itself).
DISPATCHERS = ["index", "einsum", "grouped"]


def make_layer(k, cf, batch_priority, dispatcher, group_size=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="top_k", k=k, capacity_factor=cf, batch_priority=batch_priority,
                   dispatcher=dispatcher, group_size=group_size, capacity_multiple_of=None)
    # A gate with large logits spreads the softmax so ties are impossible and choices are decisive.
    with torch.no_grad():
        layer.router.gate.weight.mul_(3.0)
    return layer.to(dtype)


def hand_capacity(group_size, k, cf):
    return math.ceil(group_size * k * cf / EXPERTS)


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
@pytest.mark.parametrize("batch_priority", [False, True])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_per_token_loop_with_drops(dispatcher, batch_priority, k, dtype, tol):
    layer = make_layer(k, cf=0.5, batch_priority=batch_priority, dispatcher=dispatcher, dtype=dtype).eval()
    x = torch.randn(3, 12, DIM, dtype=dtype)
    y, metrics = layer(x)
    capacity = hand_capacity(12, k, 0.5)
    ref, dropped, first = top_k_loop(layer, x, k, capacity, group_size=12, batch_priority=batch_priority)
    assert metrics.capacity == capacity
    assert dropped, "capacity should be tight enough to drop tokens"
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=tol, rtol=tol)
    assert metrics.dropped_fraction.item() == pytest.approx(len(dropped) / (36 * k))
    top = metrics.top_expert.reshape(-1).tolist()
    assert top == [-1 if (t, 0) in dropped else first[t] for t in range(36)]
    # Tokens whose every choice was dropped get exactly zero output (the residual carries them).
    for t in range(36):
        if all((t, j) in dropped for j in range(k)):
            assert torch.all(y.reshape(-1, DIM)[t] == 0)


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
@pytest.mark.parametrize("k", [1, 2])
def test_training_noise_matches_loop_with_same_noise(dispatcher, k):
    layer = make_layer(k, cf=0.75, batch_priority=True, dispatcher=dispatcher).train()
    x = torch.randn(2, 8, DIM, dtype=torch.float64)
    torch.manual_seed(123)
    y, metrics = layer(x)
    # The router draws one standard normal of shape [groups, group_size, E], scaled by noise_std / E.
    torch.manual_seed(123)
    noise = (torch.randn(2, 8, EXPERTS, dtype=torch.float64) * (1.0 / EXPERTS)).numpy()
    ref, dropped, _ = top_k_loop(layer, x, k, hand_capacity(8, k, 0.75), group_size=8, batch_priority=True,
                                 noise=noise)
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-10)
    assert metrics.dropped_fraction.item() == pytest.approx(len(dropped) / (16 * k))


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_bpr_drops_exactly_the_lowest_priority_tokens(dispatcher):
    layer = make_layer(1, cf=0.5, batch_priority=True, dispatcher=dispatcher).eval()
    x = torch.randn(1, 16, DIM, dtype=torch.float64)
    _, metrics = layer(x)
    gates = torch.softmax(x[0] @ layer.router.gate.weight.T, -1)
    top_w, top_e = gates.max(-1)
    capacity = hand_capacity(16, 1, 0.5)
    expected_dropped = set()
    for e in range(EXPERTS):
        mine = [t for t in range(16) if top_e[t] == e]
        mine.sort(key=lambda t: -top_w[t].item())
        expected_dropped |= set(mine[capacity:])
    got_dropped = {t for t, v in enumerate(metrics.top_expert[0].tolist()) if v == -1}
    assert expected_dropped and got_dropped == expected_dropped


def test_without_bpr_earlier_tokens_win():
    layer = make_layer(1, cf=0.5, batch_priority=False, dispatcher="index").eval()
    x = torch.randn(1, 16, DIM, dtype=torch.float64)
    _, metrics = layer(x)
    top_e = (x[0] @ layer.router.gate.weight.T).argmax(-1).tolist()
    capacity = hand_capacity(16, 1, 0.5)
    expected = {t for t in range(16) if top_e[:t].count(top_e[t]) >= capacity}
    assert {t for t, v in enumerate(metrics.top_expert[0].tolist()) if v == -1} == expected


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_group_size_spanning_images_matches_loop(dispatcher):
    layer = make_layer(2, cf=0.6, batch_priority=False, dispatcher=dispatcher, group_size=10).eval()
    x = torch.randn(4, 5, DIM, dtype=torch.float64)  # groups of two images each
    y, metrics = layer(x)
    ref, _, _ = top_k_loop(layer, x, 2, hand_capacity(10, 2, 0.6), group_size=10, batch_priority=False)
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-10)
    assert metrics.top_expert.shape == (4, 5)


def test_expert_load_counts_kept_assignments():
    layer = make_layer(2, cf=0.5, batch_priority=False, dispatcher="index").eval()
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    _, metrics = layer(x)
    _, dropped, _ = top_k_loop(layer, x, 2, hand_capacity(12, 2, 0.5), group_size=12, batch_priority=False)
    choices = (x.reshape(-1, DIM) @ layer.router.gate.weight.T).topk(2, -1).indices.tolist()
    counts = np.zeros(EXPERTS)
    for t, row in enumerate(choices):
        for j, e in enumerate(row):
            counts[e] += (t, j) not in dropped
    np.testing.assert_allclose(metrics.expert_load.numpy(), counts / counts.sum(), atol=1e-12)
