"""Routing groups that span images (`group_images`, V-MoE's 8-image groups) and the smaller remainder group of a batch
whose tokens do not fill a whole number of groups: every router against the float64 loops run on the two parts."""
import math

import numpy as np
import pytest
import torch

from moe_loop_reference import expert_choice_loop, gates_for_token, np64, soft_moe_loop, top_k_loop
from sparsevision import create_model
from sparsevision.moe import MoeMlp

DIM, HIDDEN, EXPERTS = 6, 10, 4
DISPATCHERS = ["index", "einsum", "grouped"]


def layer_of(router, dispatcher="index", seed=0, **kw):
    torch.manual_seed(seed)
    extra = {"top_k": dict(k=2, capacity_factor=0.5, capacity_multiple_of=None),
             "expert_choice": dict(capacity_factor=1.0, capacity_multiple_of=None),
             "soft": dict(num_slots=2, noise_std=0.0)}[router]
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router=router, dispatcher=dispatcher, **extra, **kw)
    if router != "soft":
        with torch.no_grad():
            layer.router.gate.weight.mul_(3.0)  # decisive choices, no ties
    return layer.double().eval()


def np_importance(x, layer):
    """CV^2 (ddof 0) of the summed softmax gates of one group's tokens."""
    gate_w = np64(layer.router.gate.weight)
    imp = np.sum([gates_for_token(gate_w, t) for t in np64(x).reshape(-1, DIM)], axis=0)
    return float(imp.var() / imp.mean() ** 2)


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
@pytest.mark.parametrize("batch_priority", [False, True])
def test_top_k_remainder_group_is_routed_alone_with_its_own_capacity(dispatcher, batch_priority):
    layer = layer_of("top_k", dispatcher, group_images=2, batch_priority=batch_priority)
    x = torch.randn(5, 6, DIM, dtype=torch.float64)  # 2 groups of 2 images (12 tokens) + 1 image (6 tokens)
    y, metrics = layer(x)
    cap_full, cap_rest = math.ceil(12 * 2 * 0.5 / EXPERTS), math.ceil(6 * 2 * 0.5 / EXPERTS)
    ref_full, dropped_full, first_full = top_k_loop(layer, x[:4], 2, cap_full, 12, batch_priority)
    ref_rest, dropped_rest, first_rest = top_k_loop(layer, x[4:], 2, cap_rest, 6, batch_priority)
    np.testing.assert_allclose(y[:4].detach().numpy(), ref_full, atol=1e-10)
    np.testing.assert_allclose(y[4:].detach().numpy(), ref_rest, atol=1e-10)
    assert dropped_full and dropped_rest  # both parts drop, so both capacities matter
    assert metrics.dropped_fraction.item() == pytest.approx((len(dropped_full) + len(dropped_rest)) / (30 * 2))
    assert metrics.capacity == cap_full
    # Importance loss: the mean over the three groups, each of its own tokens.
    groups = [x[0:2], x[2:4], x[4:5]]
    assert metrics.importance_loss.item() == pytest.approx(np.mean([np_importance(g, layer) for g in groups]),
                                                           rel=1e-9)
    first = {**first_full, **{t + 24: e for t, e in first_rest.items()}}
    dropped_first = {t for t, j in dropped_full if j == 0} | {t + 24 for t, j in dropped_rest if j == 0}
    expected_top = [-1 if t in dropped_first else first[t] for t in range(30)]
    assert metrics.top_expert.shape == (5, 6) and metrics.top_expert.reshape(-1).tolist() == expected_top
    # expert_load: each expert's share of all kept assignments, counted from the loops.
    kept = np.zeros(EXPERTS)
    for xs, cap, size, offset in ((x[:4], cap_full, 12, 0), (x[4:], cap_rest, 6, 24)):
        _, dropped, _ = top_k_loop(layer, xs, 2, cap, size, batch_priority)
        gate_w = np64(layer.router.gate.weight)
        for t, tok in enumerate(np64(xs).reshape(-1, DIM)):
            gates = gates_for_token(gate_w, tok)
            for j, e in enumerate(sorted(range(EXPERTS), key=lambda e: -gates[e])[:2]):
                kept[e] += (t, j) not in dropped
    np.testing.assert_allclose(metrics.expert_load.numpy(), kept / kept.sum(), atol=1e-7)


def test_group_images_and_the_same_group_size_in_tokens_agree():
    x = torch.randn(5, 6, DIM, dtype=torch.float64)
    by_images, metrics_images = layer_of("top_k", group_images=2)(x)
    by_tokens, metrics_tokens = layer_of("top_k", group_size=12)(x)
    torch.testing.assert_close(by_images, by_tokens, rtol=0, atol=0)
    assert metrics_images.dropped_fraction == metrics_tokens.dropped_fraction
    # group_images follows the tokens per image (a PatchMerger's 8, a larger resolution's 576).
    layer = layer_of("top_k", group_images=2)
    assert [layer.tokens_per_group(n) for n in (6, 8, 576)] == [12, 16, 1152]


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_expert_choice_remainder_group(dispatcher):
    layer = layer_of("expert_choice", dispatcher, group_size=10)
    x = torch.randn(4, 4, DIM, dtype=torch.float64)  # 16 tokens: one group of 10 + 6
    y, metrics = layer(x)
    flat = x.reshape(1, 16, DIM)
    ref_full, _ = expert_choice_loop(layer, flat[:, :10], math.ceil(10 / EXPERTS), 10)
    ref_rest, _ = expert_choice_loop(layer, flat[:, 10:], math.ceil(6 / EXPERTS), 6)
    np.testing.assert_allclose(y.reshape(16, DIM).detach().numpy(),
                               np.concatenate([ref_full[0], ref_rest[0]]), atol=1e-10)
    np.testing.assert_allclose(metrics.expert_load.numpy(), np.full(EXPERTS, 1 / EXPERTS))


def test_soft_remainder_group():
    layer = layer_of("soft", group_size=10)
    x = torch.randn(4, 4, DIM, dtype=torch.float64)
    y, _ = layer(x)
    flat = x.reshape(1, 16, DIM)
    ref = np.concatenate([soft_moe_loop(layer, flat[:, :10], 10)[0][0], soft_moe_loop(layer, flat[:, 10:], 6)[0][0]])
    np.testing.assert_allclose(y.reshape(16, DIM).detach().numpy(), ref, atol=1e-10)


def test_remainder_group_gets_gradients_in_training():
    layer = layer_of("top_k", group_images=2).train()
    x = torch.randn(3, 6, DIM, dtype=torch.float64, requires_grad=True)
    y, metrics = layer(x)
    (y.square().sum() + metrics.aux_loss).backward()
    assert x.grad[2].abs().sum() > 0 and x.grad[:2].abs().sum() > 0
    assert metrics.load_loss > 0 and torch.isfinite(metrics.aux_loss)


def test_model_routes_image_groups_and_a_partial_last_batch():
    """With 8-image groups, a batch of 10 images computes exactly its first 8 images as a batch of 8 and its last
    2 as a batch of 2: groups never mix across the cut."""
    model = create_model("vmoe_tiny_test", group_images=8, capacity_factor=0.5).double().eval()
    x = torch.randn(10, 3, 32, 32, dtype=torch.float64)
    features = model.forward_features  # the head starts at zero: compare what it will see
    with torch.no_grad():
        torch.testing.assert_close(features(x), torch.cat([features(x[:8]), features(x[8:])]), rtol=0, atol=1e-12)
        # ... and differently from routing each image alone, since tokens compete for capacity across images.
        alone = torch.cat([features(x[i:i + 1]) for i in range(8)])
        assert (features(x[:8]) - alone).abs().max() > 1e-3


def test_registered_vmoe_models_route_eight_image_groups():
    with torch.device("meta"):
        for name in ("vmoe_s32", "vmoe_b16", "vmoe_b16_pm"):
            model = create_model(name)
            assert {(m.group_images, m.group_size) for m in model.moe_mlps()} == {(8, None)}, name
        # B/16 at 224 px: 8 x 197 tokens per group, the official get_vmoe_params(...).encoder.moe.group_size.
        assert create_model("vmoe_b16").moe_mlps()[0].tokens_per_group(197) == 1576
        tokens = create_model("vmoe_b16", group_size=1568).moe_mlps()[0]
        assert (tokens.group_images, tokens.group_size) == (None, 1568)
        alone = create_model("vmoe_b16", group_images=None).moe_mlps()[0]
        assert alone.tokens_per_group(197) == 197
