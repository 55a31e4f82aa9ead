"""Expert-choice and Soft MoE layers vs float64 loop references (Zhou et al. 2022; Puigcerver et al. 2023)."""
import math

import numpy as np
import pytest
import torch

from moe_loop_reference import expert_choice_loop, soft_moe_loop
from sparsevision.moe import MoeMlp

DIM, HIDDEN, EXPERTS = 6, 10, 4
# Every dispatcher computes the same function; "grouped" runs its padded-bmm fallback at these odd sizes and in
# float64 (test_moe_grouped.py drives torch._grouped_mm itself).
DISPATCHERS = ["index", "einsum", "grouped"]


def expert_choice_layer(cf, dispatcher, group_size=None, dtype=torch.float64):
    torch.manual_seed(0)
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="expert_choice", capacity_factor=cf, dispatcher=dispatcher,
                   group_size=group_size, capacity_multiple_of=None)
    with torch.no_grad():
        layer.router.gate.weight.mul_(3.0)
    return layer.to(dtype).eval()


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_expert_choice_matches_loop(dispatcher, dtype, tol):
    layer = expert_choice_layer(0.75, dispatcher, dtype=dtype)
    x = torch.randn(3, 10, DIM, dtype=dtype)
    y, metrics = layer(x)
    capacity = math.ceil(10 * 0.75 / EXPERTS)
    ref, picks = expert_choice_loop(layer, x, capacity, group_size=10)
    assert metrics.capacity == capacity
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=tol, rtol=tol)
    picked = {t for group in picks for chosen in group for t in chosen}
    assert metrics.dropped_fraction.item() == pytest.approx(1 - len(picked) / 30)
    assert ((metrics.top_expert.reshape(-1) == -1).nonzero().reshape(-1).tolist()
            == sorted(set(range(30)) - picked))


def test_each_expert_gets_exactly_its_top_c_tokens():
    layer = expert_choice_layer(1.0, "index")
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    groups = x.reshape(-1, 12, DIM)
    routing = layer.router(groups)
    capacity = math.ceil(12 * 1.0 / EXPERTS)
    gates = torch.softmax(groups @ layer.router.gate.weight.T, -1)
    for g in range(2):
        for e in range(EXPERTS):
            mine = routing.token_index[g][routing.expert_index[g] == e].tolist()
            assert len(mine) == capacity
            expected = np.argsort(-gates[g, :, e].detach().numpy(), kind="stable")[:capacity]
            assert sorted(mine) == sorted(expected.tolist())
    np.testing.assert_allclose(layer(x)[1].expert_load.numpy(), np.full(EXPERTS, 1 / EXPERTS))


def test_expert_choice_capacity_larger_than_group_is_an_error():
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="expert_choice", capacity_factor=1.0, capacity_multiple_of=4)
    layer(torch.randn(2, 5, DIM))  # ceil(5/4) = 2, padded to 4 <= 5 tokens: fine
    with pytest.raises(ValueError, match="group_size=3"):
        layer(torch.randn(2, 3, DIM))  # ceil(3/4) = 1, padded to 4 > 3 tokens

def soft_layer(num_slots, dispatcher="index", dtype=torch.float64):
    torch.manual_seed(0)
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="soft", num_slots=num_slots, noise_std=0.0, dispatcher=dispatcher)
    with torch.no_grad():
        layer.router.scale.fill_(2.5)  # a non-trivial learned scale must enter the logits
    return layer.to(dtype)


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_soft_matches_loop(dispatcher, dtype, tol):
    layer = soft_layer(2, dispatcher, dtype)
    x = torch.randn(2, 7, DIM, dtype=dtype)
    y, metrics = layer(x)
    ref, dispatch, combine = soft_moe_loop(layer, x, group_size=7)
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=tol, rtol=tol)
    routing = layer.router(x)
    np.testing.assert_allclose(routing.dispatch_weights.detach().double().numpy(), dispatch, atol=tol)
    np.testing.assert_allclose(routing.combine_weights.detach().double().numpy(), combine, atol=tol)
    assert metrics.capacity == 2 and metrics.dropped_fraction.item() == 0.0
    assert metrics.top_expert.tolist() == combine.sum(-1).argmax(-1).tolist()


def test_soft_weights_are_convex_combinations():
    layer = soft_layer(3)
    routing = layer.router(torch.randn(4, 9, DIM, dtype=torch.float64))
    # Each slot's dispatch weights sum to 1 over the group's tokens; each token's combine weights over all slots.
    torch.testing.assert_close(routing.dispatch_weights.sum(1), torch.ones(4, EXPERTS, 3, dtype=torch.float64))
    torch.testing.assert_close(routing.combine_weights.sum((2, 3)), torch.ones(4, 9, dtype=torch.float64))


def test_soft_slots_from_capacity_factor_and_group_size():
    # Official: num_slots = round(group_size * capacity_factor / E), no padding.
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="soft", group_size=10, capacity_factor=1.0)
    assert layer.router.mu.shape == (DIM, EXPERTS, round(10 / EXPERTS))
    with pytest.raises(ValueError, match="num_slots"):
        MoeMlp(DIM, HIDDEN, EXPERTS, router="soft")


def test_soft_noise_only_in_training():
    layer = soft_layer(2)
    layer.router.noise_std = 0.5
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0], rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x)[0], layer(x)[0])
    # Soft MoE's default is the official noise_std=0: training is deterministic too.
    plain = MoeMlp(DIM, HIDDEN, EXPERTS, router="soft", num_slots=2).double().train()
    torch.testing.assert_close(plain(x)[0], plain(x)[0], rtol=0, atol=0)
