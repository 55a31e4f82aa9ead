"""Parity of sparsevision.moe with the official google-research/vmoe code, through a float64 numpy transcription.

Every `official_*` function below follows one JAX function of vmoe (named in its docstring) step by step, written
from the official sources, not from sparsevision: `vmoe/moe.py` (compute_capacity, the top-experts-per-item common
routine with its cumsum buffer positions and Batch Priority Routing, the einsum / indices dispatchers, the
top-items-per-expert dispatcher), `vmoe/nn/routing.py` (NoisyTopExpertsPerItemRouter / NoisyTopItemsPerExpertRouter
and their auxiliary losses), `vmoe/projects/soft_moe/router.py` (SoftRouter), `vmoe/nn/vit_moe.py` (MlpMoeBlock's
grouping) and the placement rules of `vmoe/configs/vmoe_paper/common.py` / `vmoe/projects/soft_moe/configs/common.py`.

JAX semantics emulated: `jax.lax.top_k` returns the largest values first and breaks ties towards the *lower* index
(a stable argsort of the negated values); `jnp.argsort` is stable; `jnp.argmax` returns the first maximum;
`jax.scipy.stats.norm.cdf` is the standard normal CDF. The logit noise the routers draw is injected (the same
standard-normal sample on both sides) by patching `torch.randn_like`.
"""
import itertools
import math
import zlib

import numpy as np
import pytest
import torch

from sparsevision.models.vmoe import parse_moe_layers
from sparsevision.moe import (DenseDispatcher, MoeMlp, NoisyTopExpertsPerItemRouter, NoisyTopItemsPerExpertRouter,
                              SoftRouter, compute_capacity, load_loss)

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


# ------------------------------------------------------------------------------------ official code, in numpy

def official_compute_capacity(num_tokens, num_experts, capacity_factor, ceil_or_round="ceil", multiple_of=4):
    """vmoe.moe.compute_capacity."""
    if ceil_or_round == "ceil":
        capacity = int(math.ceil(num_tokens * capacity_factor / num_experts))
    elif ceil_or_round == "round":
        capacity = int(round(num_tokens * capacity_factor / num_experts))
    else:
        raise ValueError(ceil_or_round)
    if capacity < 1:
        raise ValueError("capacity < 1")
    if multiple_of and multiple_of > 0:
        capacity += (-capacity) % multiple_of
    return capacity


def lax_top_k(x, k):
    """jax.lax.top_k over the last axis: descending, equal values keep the lower index first."""
    index = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, index, axis=-1), index


def jax_softmax(x, axis=-1):
    """jax.nn.softmax (max-shifted)."""
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def one_hot(index, n, axis=-1):
    """jax.nn.one_hot: out-of-range indices (negative or >= n) give all-zero rows."""
    out = (np.asarray(index)[..., None] == np.arange(n)).astype(np.int64)
    return np.moveaxis(out, -1, axis)


def norm_cdf(z):
    return 0.5 * _erfc(-z / math.sqrt(2.0))


def official_importance_loss(gates):
    """NoisyTopExpertsPerItemRouter._importance_auxiliary_loss (one group: gates [S, E])."""
    importance = gates.sum(axis=tuple(range(gates.ndim - 1)))
    return (importance.std() / importance.mean()) ** 2


def official_load_loss(logits, logits_noisy, noise_std, num_selected_experts):
    """NoisyTopExpertsPerItemRouter._load_auxiliary_loss (one group)."""
    num_experts = logits_noisy.shape[-1]
    threshold_index = lax_top_k(logits_noisy, num_selected_experts)[1][..., -1]
    threshold = (one_hot(threshold_index, num_experts) * logits_noisy).sum(-1)
    noise_required_to_win = (threshold[..., None] - logits) / noise_std
    p = 1.0 - norm_cdf(noise_required_to_win)
    p_mean = p.mean(axis=0)
    return (p_mean.std() / p_mean.mean()) ** 2


def official_gshard_loss(gates):
    """NoisyTopExpertsPerItemRouter._gshard_auxiliary_loss (one group)."""
    num_experts = gates.shape[1]
    mean_gates = gates.mean(axis=0)
    mean_top1 = one_hot(gates.argmax(axis=1), num_experts).mean(axis=0)
    return (mean_top1 * mean_gates).mean() * num_experts**2


def official_top_experts_common(gates, k, batch_priority):
    """vmoe.moe._get_top_experts_per_item_common (one group: gates [S, E])."""
    group_size, num_experts = gates.shape
    combine_weights, expert_index = lax_top_k(gates, k)
    if batch_priority:
        perm = np.argsort(-combine_weights[:, 0], kind="stable")
        expert_index = expert_index[perm]
    expert_index = expert_index.T.ravel()  # (K*S,): all top-1 choices before any top-2 choice
    expert_one_hot = one_hot(expert_index, num_experts)
    buffer_index = np.cumsum(expert_one_hot, axis=0) * expert_one_hot - 1
    buffer_index = buffer_index.reshape(-1, group_size, num_experts).swapaxes(0, 1)  # (S, K, E)
    expert_index = expert_index.reshape(-1, group_size).T
    if batch_priority:
        inv_perm = np.argsort(perm)
        expert_index, buffer_index = expert_index[inv_perm], buffer_index[inv_perm]
    return combine_weights, expert_index, buffer_index


def official_top_experts_einsum_dispatcher(gates, k, capacity, batch_priority):
    """vmoe.moe._get_top_experts_per_item_einsum_dispatcher: (combine, dispatch), each [S, E, C]."""
    _, _, buffer_index = official_top_experts_common(gates, k, batch_priority)
    buffer_index = buffer_index.max(axis=1)
    dispatch = one_hot(buffer_index, capacity)
    return gates[:, :, None] * dispatch, dispatch


def official_top_experts_indices(gates, k, capacity, batch_priority):
    """vmoe.moe._get_top_experts_per_item_expert_indices_dispatcher: (expert [S, K], buffer [S, K], weight [S, K]);
    a choice with buffer >= capacity is masked out (dropped) by ExpertIndicesDispatcher.combine."""
    combine_weights, expert_index, buffer_index = official_top_experts_common(gates, k, batch_priority)
    return expert_index, buffer_index.max(axis=2), combine_weights


def official_top_items_einsum_dispatcher(gates, capacity):
    """vmoe.moe._get_top_items_per_expert_einsum_dispatcher: (combine, dispatch), each [S, E, C]."""
    group_size, _ = gates.shape
    _, top_items_index = lax_top_k(gates.T, capacity)  # (E, C)
    dispatch = one_hot(top_items_index, group_size, axis=0)  # (S, E, C)
    return gates[:, :, None] * dispatch, dispatch


def _weighted_sum(*pairs):
    """vmoe.nn.routing._weighted_sum."""
    return sum(x * w for w, x in pairs if w > 0)


def official_top_experts_router(x, kernel, noise, *, k, noise_std, capacity_factor, batch_priority,
                                importance_w=1.0, load_w=1.0, gshard_w=0.0, ceil_or_round="ceil", multiple_of=4):
    """NoisyTopExpertsPerItemRouter.__call__ for x [G, S, D], Dense kernel [D, E], standard-normal `noise`
    [G, S, E] (None = deterministic). Per-group metrics are averaged over groups, as the trainer's jnp.mean."""
    g, s, _ = x.shape
    num_experts = kernel.shape[1]
    logits = x @ kernel
    gates = jax_softmax(logits)
    importance = np.array([official_importance_loss(gates[i]) for i in range(g)])
    if noise is None:
        dispatch_gates = gates
        gshard = np.array([official_gshard_loss(gates[i]) for i in range(g)])
        load = np.zeros(g)
        aux = _weighted_sum((gshard_w, gshard), (importance_w, importance))
    else:
        std = (1.0 / num_experts) * noise_std
        noisy = logits + std * noise
        dispatch_gates = jax_softmax(noisy)
        load = np.array([official_load_loss(logits[i], noisy[i], std, k) for i in range(g)])
        gshard = np.array([official_gshard_loss(dispatch_gates[i]) for i in range(g)])
        aux = _weighted_sum((gshard_w, gshard), (importance_w, importance), (load_w, load))
    capacity = official_compute_capacity(s * k, num_experts, capacity_factor, ceil_or_round, multiple_of)
    combine, dispatch = zip(*[official_top_experts_einsum_dispatcher(dispatch_gates[i], k, capacity, batch_priority)
                              for i in range(g)])
    expert, buffer, weight = zip(*[official_top_experts_indices(dispatch_gates[i], k, capacity, batch_priority)
                                   for i in range(g)])
    return dict(capacity=capacity, combine=np.stack(combine), dispatch=np.stack(dispatch), expert=np.stack(expert),
                buffer=np.stack(buffer), weight=np.stack(weight), importance=importance.mean(), load=load.mean(),
                gshard=gshard.mean(), aux=np.mean(aux))


def official_top_items_router(x, kernel, noise, *, noise_std, capacity_factor, ceil_or_round="ceil", multiple_of=4):
    """NoisyTopItemsPerExpertRouter.__call__ (expert choice) followed by get_top_items_per_expert_dispatcher."""
    g, s, _ = x.shape
    num_experts = kernel.shape[1]
    logits = x @ kernel
    if noise is not None:
        logits = logits + (1.0 / num_experts) * noise_std * noise
    gates = jax_softmax(logits)
    capacity = official_compute_capacity(s, num_experts, capacity_factor, ceil_or_round, multiple_of)
    combine, dispatch = zip(*[official_top_items_einsum_dispatcher(gates[i], capacity) for i in range(g)])
    return dict(capacity=capacity, combine=np.stack(combine), dispatch=np.stack(dispatch))


def soft_normalize(x, axis=-1, eps=1e-6):
    """vmoe.projects.soft_moe.router.normalize."""
    return x / np.sqrt(np.square(x).sum(axis=axis, keepdims=True) + eps)


def official_soft_router(x, mu, scale, noise=None, noise_std=0.0):
    """vmoe.projects.soft_moe.router.SoftRouter.__call__: (dispatch, combine), each [G, S, E, P]."""
    x = soft_normalize(x, axis=-1)
    mu = soft_normalize(mu, axis=0)
    if x.size < mu.size:
        x = x * scale
    else:
        mu = mu * scale
    logits = np.einsum("gmd,dnp->gmnp", x, mu)
    if noise is not None and noise_std > 0:
        logits = logits + noise_std * noise
    dispatch = jax_softmax(logits, axis=1)
    combine = jax_softmax(logits, axis=(2, 3))
    return dispatch, combine


def flax_gelu(v, approximate):
    if approximate:  # flax.linen.gelu default
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    return 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))


def official_moe_block(x, group_size, combine, dispatch, w1, b1, w2, b2, approximate):
    """MlpMoeBlock.__call__ with the EinsumDispatcher: tokens [B, N, D] -> groups of `group_size` consecutive tokens,
    each expert's MlpBlock (Dense_0, gelu, Dense_1; kernels [E, in, out]) on its buffer, einsum combine."""
    groups = x.reshape(-1, group_size, x.shape[-1])
    buffers = np.einsum("gsec,gsd->gecd", dispatch, groups)
    hidden = flax_gelu(np.einsum("gecd,edh->gech", buffers, w1) + b1[None, :, None], approximate)
    out = np.einsum("gech,ehd->gecd", hidden, w2) + b2[None, :, None]
    return np.einsum("gsec,gecd->gsd", combine, out).reshape(x.shape[:-1] + (w2.shape[-1],))


# -------------------------------------------------------------------------------------------------- helpers

def case_seed(*case):
    """A seed that depends on the test case only (str hashes are salted per process)."""
    return zlib.crc32(repr(case).encode())


def np64(t):
    return t.detach().double().numpy()


def inject_noise(monkeypatch, noise):
    """Make the next torch.randn_like calls return `noise` (the routers' only randomness)."""
    sample = torch.as_tensor(noise)

    def fake_randn_like(t, *args, **kwargs):
        assert tuple(t.shape) == tuple(sample.shape), (tuple(t.shape), tuple(sample.shape))
        return sample.to(dtype=t.dtype)

    monkeypatch.setattr(torch, "randn_like", fake_randn_like)


def imbalanced_tokens(rng, g, s, d, skew):
    """Tokens sharing a common direction, so most of them prefer the same experts and buffers overflow."""
    return rng.normal(size=(g, s, d)) + skew * rng.normal(size=(1, 1, d))


def tie_case(rng, g, s, d, e):
    """Integer tokens and kernel (exact logits, so exact ties on both sides): duplicated tokens, all-zero tokens
    (every expert tied) and duplicated kernel columns (two experts tied for every token). Redrawn until tokens with
    different logit rows have clearly different gates, so only exact ties exist, never near-ties that float
    summation order could flip."""
    while True:
        x = rng.integers(-2, 3, size=(g, s, d)).astype(np.float64)
        x[:, rng.integers(0, s, size=max(1, s // 4))] = 0.0
        dup = rng.integers(0, s, size=(2, max(1, s // 4)))
        x[:, dup[0]] = x[:, dup[1]]
        kernel = rng.integers(-1, 2, size=(d, e)).astype(np.float64)
        a, b = rng.choice(e, size=2, replace=False)
        kernel[:, b] = kernel[:, a]
        logits = x @ kernel
        ok = True
        for i in range(g):
            distinct = jax_softmax(np.unique(logits[i], axis=0))
            # Each expert's gates (expert choice, combine weights) and the top gates (BPR order).
            for values in list(distinct.T) + [distinct.max(axis=1)]:
                gaps = np.diff(np.sort(values))
                ok &= not (len(gaps) and gaps.min() < 1e-9)
        if ok:
            return x, kernel


def make_top_k_router(d, e, kernel, **kwargs):
    router = NoisyTopExpertsPerItemRouter(d, e, **kwargs).double()
    with torch.no_grad():
        router.gate.weight.copy_(torch.from_numpy(kernel.T))
    return router


def check_top_k_routing(router, x, ref, k):
    routing = router(torch.from_numpy(x))
    g, s, _ = x.shape
    assert routing.capacity == ref["capacity"]
    dense = DenseDispatcher.from_routing(routing, s)
    np.testing.assert_array_equal(np64(dense.dispatch_weights), ref["dispatch"])
    np.testing.assert_allclose(np64(dense.combine_weights), ref["combine"], rtol=0, atol=1e-13)
    # Per-choice view: expert ids in the official (S, K) order, and the dropped (group, token, choice) set.
    expert = routing.expert_index.view(g, s, k).numpy()
    np.testing.assert_array_equal(expert, ref["expert"])
    slot = routing.slot_index.view(g, s, k).numpy()
    ref_slot = np.where(ref["buffer"] < ref["capacity"], ref["buffer"], -1)
    np.testing.assert_array_equal(slot, ref_slot)
    np.testing.assert_allclose(np64(routing.combine_weight).reshape(g, s, k), ref["weight"], rtol=0, atol=1e-13)
    m = routing.metrics
    # A float32 statistic (not an official output): compare at float32 precision.
    np.testing.assert_allclose(float(m.dropped_fraction), np.mean(ref_slot < 0), rtol=0, atol=1e-6)
    for name in ("importance", "load", "gshard"):
        np.testing.assert_allclose(getattr(m, f"{name}_loss").item(), ref[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(m.aux_loss.item(), ref["aux"], rtol=1e-10, atol=1e-12)
    return np.sum(ref_slot < 0)


# ------------------------------------------------------------------------------------------------- capacity

CAPACITY_GRID = list(itertools.product(
    [1, 2, 3, 5, 8, 17, 49, 50, 64, 65, 100, 196, 197, 256, 392, 394, 400, 576, 577, 1576, 3152],
    [1, 2, 3, 4, 7, 8, 16, 32, 64, 128, 256],
    [0.01, 0.1, 0.125, 0.25, 0.5, 0.75, 1.0, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0],
    ["ceil", "round"], [None, 0, 1, 2, 4, 8]))


def test_capacity_matches_official_over_grid():
    mismatches = []
    for num_tokens, num_experts, cf, mode, multiple_of in CAPACITY_GRID:
        try:
            expected = official_compute_capacity(num_tokens, num_experts, cf, mode, multiple_of)
        except ValueError:
            expected = "error"
        try:
            got = compute_capacity(num_tokens, num_experts, cf, mode, multiple_of)
        except ValueError:
            got = "error"
        if got != expected:
            mismatches.append((num_tokens, num_experts, cf, mode, multiple_of, got, expected))
    assert not mismatches, mismatches[:10]
    assert len(CAPACITY_GRID) > 40_000


# ----------------------------------------------------------------------------------------------- top-k router

def for_each_case(cases, check):
    """Run `check(*case)` on every case, naming the failing case (many cases per test keep pytest's overhead low)."""
    for case in cases:
        try:
            check(*case)
        except AssertionError as error:
            raise AssertionError(f"case {case}: {error}") from error
    return len(cases)


# (groups, group_size, experts) x k x capacity factor x (ceil_or_round, multiple_of) x seed
TOP_K_GRID = [(shape, k, cf, rounding, seed)
              for shape, k, cf, rounding, seed in itertools.product(
                  [(1, 16, 4), (3, 10, 8), (2, 33, 5), (2, 24, 16), (4, 7, 2)], [1, 2], [0.5, 0.75, 1.0, 1.25, 2.0],
                  [("ceil", 4), ("round", None), ("ceil", 1)], range(1))]


@pytest.mark.parametrize("noisy", [False, True], ids=["eval", "train_noise"])
@pytest.mark.parametrize("bpr", [False, True], ids=["vanilla", "bpr"])
def test_top_k_router_matches_official(monkeypatch, bpr, noisy):
    def check(shape, k, cf, rounding, seed):
        (g, s, e), (mode, mult), d = shape, rounding, 6
        rng = np.random.default_rng(case_seed(shape, k, cf, rounding, seed, bpr, noisy))
        x, kernel = imbalanced_tokens(rng, g, s, d, skew=1.5), rng.normal(size=(d, e))
        noise = rng.normal(size=(g, s, e)) if noisy else None
        noise_std = 1.0 + rng.random()
        weights = dict(importance_w=rng.random(), load_w=rng.random(), gshard_w=rng.choice([0.0, rng.random()]))
        ref = official_top_experts_router(x, kernel, noise, k=k, noise_std=noise_std, capacity_factor=cf,
                                          batch_priority=bpr, ceil_or_round=mode, multiple_of=mult, **weights)
        router = make_top_k_router(d, e, kernel, k=k, capacity_factor=cf, batch_priority=bpr, noise_std=noise_std,
                                   importance_loss_weight=weights["importance_w"],
                                   load_loss_weight=weights["load_w"], gshard_loss_weight=weights["gshard_w"],
                                   capacity_ceil_or_round=mode, capacity_multiple_of=mult).train(noisy)
        if noisy:
            inject_noise(monkeypatch, noise)
        dropped.append(check_top_k_routing(router, x, ref, k))

    dropped = []
    assert for_each_case(TOP_K_GRID, check) == 150
    assert sum(n > 0 for n in dropped) > 50  # not vacuous: many cases drop choices


def test_top_k_router_bpr_changes_which_choices_are_dropped():
    """BPR and vanilla routing drop different choices on the same gates, each exactly as the official code."""
    bpr_differs = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        g, s, e, k, d = 2, 20, 4, 2, 6
        x, kernel = imbalanced_tokens(rng, g, s, d, skew=1.5), rng.normal(size=(d, e))
        refs = [official_top_experts_router(x, kernel, None, k=k, noise_std=1.0, capacity_factor=0.75,
                                            batch_priority=bpr, multiple_of=None) for bpr in (False, True)]
        for bpr, ref in zip((False, True), refs):
            router = make_top_k_router(d, e, kernel, k=k, capacity_factor=0.75, batch_priority=bpr,
                                       capacity_multiple_of=None).eval()
            assert check_top_k_routing(router, x, ref, k) > 0
        bpr_differs += not np.array_equal(refs[0]["dispatch"], refs[1]["dispatch"])
    assert bpr_differs >= 10


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("bpr", [False, True], ids=["vanilla", "bpr"])
def test_top_k_router_exact_ties_as_official(k, bpr):
    """Exact ties: lax.top_k picks the lower expert index first, BPR's argsort keeps token order among equal top
    gates, so tied tokens / experts are routed (and dropped) exactly as the official code does."""
    def check(seed, cf):
        rng = np.random.default_rng(case_seed(seed, k, bpr, cf))
        g, s, d, e = 2, 16, 5, 4
        x, kernel = tie_case(rng, g, s, d, e)
        ref = official_top_experts_router(x, kernel, None, k=k, noise_std=1.0, capacity_factor=cf,
                                          batch_priority=bpr, multiple_of=None)
        router = make_top_k_router(d, e, kernel, k=k, capacity_factor=cf, batch_priority=bpr,
                                   capacity_multiple_of=None).eval()
        check_top_k_routing(router, x, ref, k)

    assert for_each_case(list(itertools.product(range(8), [0.75, 1.5])), check) == 16


def test_all_zero_logits_pick_the_first_experts():
    """A token whose logits are all equal (e.g. a zero input) goes to experts 0..k-1, as lax.top_k orders ties."""
    for e, k in [(2, 1), (4, 2), (8, 2), (16, 1), (32, 2), (64, 2), (128, 1)]:
        router = NoisyTopExpertsPerItemRouter(4, e, k=k, capacity_factor=float(e), capacity_multiple_of=None)
        routing = router.double().eval()(torch.zeros(3, 5, 4, dtype=torch.float64))
        assert routing.expert_index.view(3, 5, k).tolist() == [[list(range(k))] * 5] * 3, (e, k)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_load_loss_threshold_gradient_goes_where_official_does(k):
    """With tied noisy logits (low-precision gates) the official threshold is the k-th entry of lax.top_k, and
    `one_hot(index) * logits_noisy` sends the threshold's gradient to that entry only."""
    rng = np.random.default_rng(k)
    noisy = rng.integers(-2, 3, size=(3, 10, 6)).astype(np.float64)  # many exact ties
    logits = rng.normal(size=noisy.shape)
    expected = [official_load_loss(logits[i], noisy[i], 0.7, k) for i in range(3)]
    noisy_t = torch.from_numpy(noisy).requires_grad_()
    loss = load_loss(torch.from_numpy(logits), noisy_t, 0.7, k)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-12)
    loss.sum().backward()
    kth = lax_top_k(noisy, k)[1][..., -1]
    gets_gradient = noisy_t.grad.numpy() != 0
    np.testing.assert_array_equal(gets_gradient, one_hot(kth, 6).astype(bool))


# ------------------------------------------------------------------------------------------ expert-choice router

def make_expert_choice_router(d, e, kernel, **kwargs):
    router = NoisyTopItemsPerExpertRouter(d, e, **kwargs).double()
    with torch.no_grad():
        router.gate.weight.copy_(torch.from_numpy(kernel.T))
    return router


def check_dense_routing(routing, group_size, ref):
    assert routing.capacity == ref["capacity"]
    dense = DenseDispatcher.from_routing(routing, group_size)
    np.testing.assert_array_equal(np64(dense.dispatch_weights), ref["dispatch"])
    np.testing.assert_allclose(np64(dense.combine_weights), ref["combine"], rtol=0, atol=1e-13)


@pytest.mark.parametrize("noisy", [False, True], ids=["eval", "train_noise"])
def test_expert_choice_router_matches_official(monkeypatch, noisy):
    def check(shape, cf, rounding, seed):
        (g, s, e), (mode, mult), d = shape, rounding, 5
        if official_compute_capacity(s, e, cf, mode, mult) > s:
            return  # the official lax.top_k cannot pick more tokens than a group has (we raise instead)
        rng = np.random.default_rng(case_seed(shape, cf, rounding, seed, noisy))
        x, kernel = imbalanced_tokens(rng, g, s, d, skew=1.0), rng.normal(size=(d, e))
        noise = rng.normal(size=(g, s, e)) if noisy else None
        ref = official_top_items_router(x, kernel, noise, noise_std=1.5, capacity_factor=cf, ceil_or_round=mode,
                                        multiple_of=mult)
        router = make_expert_choice_router(d, e, kernel, capacity_factor=cf, noise_std=1.5,
                                           capacity_ceil_or_round=mode, capacity_multiple_of=mult).train(noisy)
        if noisy:
            inject_noise(monkeypatch, noise)
        routing = router(torch.from_numpy(x))
        check_dense_routing(routing, s, ref)
        assert routing.metrics.aux_loss.item() == 0.0  # official: metrics["auxiliary_loss"] = 0.
        unpicked = ref["dispatch"].sum(axis=(2, 3)) == 0
        np.testing.assert_allclose(float(routing.metrics.dropped_fraction), unpicked.mean(), atol=1e-6)
        checked.append(unpicked.any())

    checked = []
    cases = list(itertools.product([(2, 16, 4), (1, 24, 8), (3, 12, 3), (2, 9, 2)], [0.5, 1.0, 1.25, 2.0],
                                   [("ceil", 4), ("round", 1)], range(3)))
    for_each_case(cases, check)
    assert len(checked) > 80 and sum(checked) > 40  # most run; many leave some tokens unpicked


def test_expert_choice_exact_ties_as_official():
    def check(seed):
        rng = np.random.default_rng(200 + seed)
        g, s, d, e = 2, 16, 5, 4
        x, kernel = tie_case(rng, g, s, d, e)
        ref = official_top_items_router(x, kernel, None, noise_std=1.0, capacity_factor=1.0, multiple_of=1)
        router = make_expert_choice_router(d, e, kernel, capacity_factor=1.0, capacity_multiple_of=1).eval()
        check_dense_routing(router(torch.from_numpy(x)), s, ref)

    assert for_each_case([(seed,) for seed in range(8)], check) == 8


# ----------------------------------------------------------------------------------------------- soft router

@pytest.mark.parametrize("noisy", [False, True], ids=["eval", "train_noise"])
def test_soft_router_matches_official(monkeypatch, noisy):
    def check(shape, p, seed):
        g, s, e, d = shape
        rng = np.random.default_rng(case_seed(shape, p, seed, noisy))
        x = rng.normal(size=(g, s, d)) * rng.uniform(0.1, 10.0, size=(g, s, 1))
        mu = rng.normal(size=(d, e, p))
        scale = rng.uniform(0.5, 20.0)
        noise = rng.normal(size=(g, s, e, p)) if noisy else None
        dispatch, combine = official_soft_router(x, mu, scale, noise, noise_std=0.3 if noisy else 0.0)
        router = SoftRouter(d, e, p, noise_std=0.3 if noisy else 0.0).double().train(noisy)
        with torch.no_grad():
            router.mu.copy_(torch.from_numpy(mu))
            router.scale.fill_(scale)
        if noisy:
            inject_noise(monkeypatch, noise)
        routing = router(torch.from_numpy(x))
        np.testing.assert_allclose(np64(routing.dispatch_weights), dispatch, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np64(routing.combine_weights), combine, rtol=1e-12, atol=1e-14)

    # Shapes on both sides of the official "scale whichever of inputs / mu is smaller" switch.
    cases = list(itertools.product([(2, 9, 4, 7), (1, 16, 8, 3), (3, 4, 2, 32), (1, 2, 16, 4)], [1, 3], range(3)))
    assert for_each_case(cases, check) == 24


@pytest.mark.parametrize("group_size, e, cf", [(16, 4, 1.0), (196, 128, 1.0), (10, 4, 1.0), (14, 4, 1.0),
                                               (49, 8, 0.5), (64, 16, 2.0)])
def test_soft_slots_from_capacity_factor_as_official(group_size, e, cf):
    expected = official_compute_capacity(group_size, e, cf, ceil_or_round="round", multiple_of=1)
    layer = MoeMlp(8, 16, e, router="soft", capacity_factor=cf, group_size=group_size)
    assert layer.router.num_slots == expected


# ---------------------------------------------------------------------------------------- whole MoE layer

def _load_official_experts(layer, rng, e, d, h):
    w1, b1 = rng.normal(size=(e, d, h)) / math.sqrt(d), rng.normal(size=(e, h)) * 0.1
    w2, b2 = rng.normal(size=(e, h, d)) / math.sqrt(h), rng.normal(size=(e, d)) * 0.1
    with torch.no_grad():
        for name, value in (("fc1_weight", w1), ("fc1_bias", b1), ("fc2_weight", w2), ("fc2_bias", b2)):
            getattr(layer.experts, name).copy_(torch.from_numpy(value))
    return w1, b1, w2, b2


@pytest.mark.parametrize("dispatcher", ["index", "einsum", "grouped"])
@pytest.mark.parametrize("router, k, bpr, noisy, approximate", [
    ("top_k", 1, False, True, "tanh"), ("top_k", 2, True, False, "tanh"), ("top_k", 2, False, True, "none"),
    ("expert_choice", 1, False, True, "tanh"), ("soft", 1, False, False, "tanh"),
])
def test_moe_layer_output_matches_official_block(monkeypatch, dispatcher, router, k, bpr, noisy, approximate):
    """MlpMoeBlock: groups of consecutive tokens spanning images (group_size != tokens per image), routing, experts,
    combine; dropped tokens get a zero output."""
    rng = np.random.default_rng(7)
    b, n, d, h, e, group_size = 4, 6, 8, 12, 4, 12
    x = imbalanced_tokens(rng, b, n, d, skew=1.0)
    groups = x.reshape(-1, group_size, d)
    num_groups = groups.shape[0]
    layer = MoeMlp(d, h, e, router=router, k=k, capacity_factor=0.75, group_size=group_size, batch_priority=bpr,
                   noise_std=1.0 if router != "soft" else 0.0, num_slots=2, dispatcher=dispatcher,
                   capacity_multiple_of=None, gelu_approximate=approximate).double().train(noisy)
    params = _load_official_experts(layer, rng, e, d, h)
    if router == "soft":
        mu, scale = rng.normal(size=(d, e, 2)), 3.0
        with torch.no_grad():
            layer.router.mu.copy_(torch.from_numpy(mu))
            layer.router.scale.fill_(scale)
        dispatch, combine = official_soft_router(groups, mu, scale)
    else:
        kernel = rng.normal(size=(d, e))
        with torch.no_grad():
            layer.router.gate.weight.copy_(torch.from_numpy(kernel.T))
        noise = rng.normal(size=(num_groups, group_size, e)) if noisy else None
        if noisy:
            inject_noise(monkeypatch, noise)
        if router == "top_k":
            ref = official_top_experts_router(groups, kernel, noise, k=k, noise_std=1.0, capacity_factor=0.75,
                                              batch_priority=bpr, multiple_of=None)
            assert ref["dispatch"].sum() < num_groups * group_size * k  # some choices are dropped
        else:
            ref = official_top_items_router(groups, kernel, noise, noise_std=1.0, capacity_factor=0.75,
                                            multiple_of=None)
        dispatch, combine = ref["dispatch"], ref["combine"]
    expected = official_moe_block(x, group_size, combine, dispatch, *params, approximate=approximate == "tanh")
    out, _ = layer(torch.from_numpy(x))
    np.testing.assert_allclose(np64(out), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
def test_router_gradients_match_official_finite_differences(monkeypatch, router):
    """Gradients reach the router only through the combine weights (and the aux losses), as in the official einsum
    combine: autograd of ours vs central differences of the official block + aux loss (routing fixed, so the
    piecewise-constant choices do not move for a 1e-6 step)."""
    rng = np.random.default_rng(11)
    b, n, d, h, e, k, group_size = 2, 8, 6, 10, 4, 2, 8
    x = imbalanced_tokens(rng, b, n, d, skew=1.0)
    groups = x.reshape(-1, group_size, d)
    noisy = router != "soft"
    layer = MoeMlp(d, h, e, router=router, k=k, capacity_factor=0.75, group_size=group_size, num_slots=2,
                   noise_std=1.0 if noisy else 0.0, capacity_multiple_of=None, gelu_approximate="tanh",
                   importance_loss_weight=0.3, load_loss_weight=0.7).double().train()
    params = _load_official_experts(layer, rng, e, d, h)
    readout = rng.normal(size=x.shape)
    noise = rng.normal(size=(groups.shape[0], group_size, e))
    if noisy:
        inject_noise(monkeypatch, noise)
        router_param = layer.router.gate.weight
        value = rng.normal(size=(d, e))
        with torch.no_grad():
            router_param.copy_(torch.from_numpy(value.T))
    else:
        router_param = layer.router.mu
        value = rng.normal(size=(d, e, 2))
        with torch.no_grad():
            router_param.copy_(torch.from_numpy(value))

    def official_objective(v):
        if router == "top_k":
            ref = official_top_experts_router(groups, v, noise, k=k, noise_std=1.0, capacity_factor=0.75,
                                              batch_priority=False, multiple_of=None, importance_w=0.3, load_w=0.7)
            combine, dispatch, aux = ref["combine"], ref["dispatch"], ref["aux"]
        elif router == "expert_choice":
            ref = official_top_items_router(groups, v, noise, noise_std=1.0, capacity_factor=0.75, multiple_of=None)
            combine, dispatch, aux = ref["combine"], ref["dispatch"], 0.0
        else:
            dispatch, combine = official_soft_router(groups, v, 1.0)
            aux = 0.0
        out = official_moe_block(x, group_size, combine, dispatch, *params, approximate=True)
        return float((out * readout).sum() + aux)

    out, metrics = layer(torch.from_numpy(x))
    ((out * torch.from_numpy(readout)).sum() + metrics.aux_loss).backward()
    got = router_param.grad.numpy()
    if noisy:
        got = got.T  # nn.Linear weight [E, D] vs the official Dense kernel [D, E]
    expected = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        step = np.zeros_like(value)
        step[idx] = 1e-6
        expected[idx] = (official_objective(value + step) - official_objective(value - step)) / 2e-6
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- MoE placement

def test_moe_layer_placement_matches_official_configs():
    """get_vmoe_config: 'Every n' = range(n-1, L, n), 'Last n' = range(1, L, 2)[-n:]; Soft MoE configs:
    range(L)[-last_n:]. Only specs the official configs build without an empty / short selection are compared
    (we raise on those instead of silently selecting fewer blocks)."""
    compared = 0
    for depth in range(1, 33):
        for n in range(1, depth + 1):
            every = tuple(range(n - 1, depth, n))
            assert parse_moe_layers(f"every-{n}", depth) == every
            odd = tuple(range(1, depth, 2))
            if n <= len(odd):
                assert parse_moe_layers(f"last-{n}", depth) == odd[-n:]
            assert parse_moe_layers(f"final-{n}", depth) == tuple(range(depth))[-n:]
            compared += 1
    assert compared == 528
