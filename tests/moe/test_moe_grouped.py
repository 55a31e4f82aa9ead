"""The packed dispatch path (dispatcher="grouped") running `torch._grouped_mm` itself (float32 on the CPU).

The shared tests (test_moe_top_k.py, test_moe_expert_choice_and_soft.py, test_moe_layer.py) run "grouped" through
its padded-bmm fallback (odd sizes, float64). Here the sizes are multiples of 4, so float32 rows are 16-byte aligned
and the real grouped GEMM runs; its undefined rows (past the last expert offset) are filled with NaN by the
`poisoned` fixture, so any consumer that reads them fails the comparison.

Tolerances: float32 vs the float64 per-token loop 1e-5 (as the reference path's float32 tests); float32 gradients
vs the float64 einsum path atol 1e-5, rtol 1e-4; bf16 vs float32 on the same routing: relative Frobenius error
(||a - b|| / ||b||) <= 1e-2 for outputs, <= 2e-2 for gradients.
"""
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dispatch_grads import EXPERT_PARAMS, outputs_and_grads
from moe_loop_reference import expert_choice_loop, top_k_loop
from sparsevision.moe import IndexDispatcher, MoeMlp, PackedDispatcher, grouped_mm_usable
from sparsevision.moe import grouped

DIM, HIDDEN, EXPERTS = 8, 12, 4

pytestmark = pytest.mark.skipif(
    not grouped_mm_usable(torch.zeros(2, DIM), torch.zeros(EXPERTS, DIM, HIDDEN)),
    reason="this torch build has no CPU torch._grouped_mm (added in torch 2.9); the fallback is tested elsewhere")


@pytest.fixture
def poisoned(monkeypatch):
    """torch._grouped_mm with its undefined rows set to NaN; records (ndim_a, ndim_b, dtype) of every call."""
    calls = []
    real = grouped._gmm

    def gmm(a, b, offs):
        calls.append((a.dim(), b.dim(), a.dtype))
        out = real(a, b, offs)
        if b.dim() == 3:  # [R, K] x [E, K, N]: rows >= offs[-1] are left unwritten by the kernel
            undefined = torch.arange(out.shape[0]) >= offs[-1]
            out = out.masked_fill(undefined[:, None], float("nan"))
        return out

    monkeypatch.setattr(grouped, "_gmm", gmm)
    return calls


def reference_gmm(a, b, offs):
    """torch._grouped_mm's contract written as a loop, in any dtype (float64 for gradcheck); NaN past offs[-1]."""
    ends = offs.tolist()
    starts = [0] + ends[:-1]
    if b.dim() == 3:
        out = torch.full((a.shape[0], b.shape[-1]), float("nan"), dtype=a.dtype)
        for e, (s, t) in enumerate(zip(starts, ends)):
            out[s:t] = a[s:t] @ b[e]
        return out
    return torch.stack([a[:, s:t] @ b[s:t] for s, t in zip(starts, ends)])


def make_layer(router, dtype=torch.float32, dispatcher="grouped", hidden=HIDDEN, seed=0, **kw):
    torch.manual_seed(seed)
    layer = MoeMlp(DIM, hidden, EXPERTS, router=router, dispatcher=dispatcher, capacity_multiple_of=None, **kw)
    with torch.no_grad():
        layer.router.gate.weight.mul_(3.0)  # decisive gates: no near-ties between experts
    return layer.to(dtype)


def fast_path_ran(calls):
    return any(c[:2] == (2, 3) for c in calls)


@pytest.mark.parametrize("batch_priority", [False, True])
@pytest.mark.parametrize("k", [1, 2])
def test_top_k_matches_loop_with_drops(poisoned, k, batch_priority):
    layer = make_layer("top_k", k=k, capacity_factor=0.5, batch_priority=batch_priority).eval()
    x = torch.randn(3, 12, DIM)
    y, metrics = layer(x)
    capacity = math.ceil(12 * k * 0.5 / EXPERTS)
    ref, dropped, _ = top_k_loop(layer, x, k, capacity, group_size=12, batch_priority=batch_priority)
    assert fast_path_ran(poisoned) and dropped
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=1e-5, rtol=1e-5)
    assert metrics.dropped_fraction.item() == pytest.approx(len(dropped) / (36 * k))
    for t in range(36):  # all choices dropped: exactly zero, although their rows hold NaN
        if all((t, j) in dropped for j in range(k)):
            assert torch.all(y.reshape(-1, DIM)[t] == 0)


def test_expert_choice_matches_loop(poisoned):
    layer = make_layer("expert_choice", capacity_factor=0.75).eval()
    x = torch.randn(3, 10, DIM)
    y, _ = layer(x)
    ref, _ = expert_choice_loop(layer, x, math.ceil(10 * 0.75 / EXPERTS), group_size=10)
    assert fast_path_ran(poisoned)
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router, kw", [("top_k", dict(k=2, capacity_factor=0.6, batch_priority=True)),
                                        ("top_k", dict(k=1, capacity_factor=0.5)),
                                        ("expert_choice", dict(capacity_factor=0.75))])
def test_float32_gradients_match_float64_einsum(poisoned, router, kw):
    fast, ref = make_layer(router, **kw), make_layer(router, torch.float64, "einsum", **kw)
    x = torch.randn(3, 12, DIM, dtype=torch.float64)
    r = torch.randn(3, 12, DIM, dtype=torch.float64)
    grads = []
    for layer in (fast, ref):
        layer.eval()  # no routing noise: both see the same gates
        xx = x.to(layer.router.gate.weight.dtype).requires_grad_(True)
        y, m = layer(xx)
        ((y * r.to(y.dtype)).sum() + m.aux_loss).backward()
        grads.append([xx.grad] + [p.grad for p in layer.parameters()])
    assert fast_path_ran(poisoned) and (2, 2, torch.float32) in poisoned  # grouped weight / bias gradients ran
    names = ["x"] + [n for n, _ in fast.named_parameters()]
    for name, got, want in zip(names, *grads):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("router", ["top_k", "expert_choice"])
def test_gradcheck_of_the_grouped_gemm_path(monkeypatch, router):
    """The custom backward of the grouped GEMMs (input, weight and bias gradients, undefined rows excluded)
    against finite differences: torch._grouped_mm has no float64, so its float64 loop stand-in runs here."""
    monkeypatch.setattr(grouped, "_gmm", reference_gmm)
    monkeypatch.setattr(grouped, "grouped_mm_usable", lambda *args: True)
    kw = dict(k=2, capacity_factor=0.7) if router == "top_k" else dict(capacity_factor=1.0)
    layer = make_layer(router, torch.float64, hidden=5, **kw).train()
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(2, 6, DIM, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        torch.manual_seed(1)
        y, m = functional_call(layer, dict(zip(names, params)), (x,))
        return y, m.aux_loss

    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


def test_expert_without_tokens_gets_zero_gradients(poisoned):
    layer = make_layer("top_k", k=2, capacity_factor=2.0)
    with torch.no_grad():
        layer.router.gate.weight.abs_()
        layer.router.gate.weight[3] = -10.0  # positive inputs: expert 3's logit is always the lowest
    x = torch.rand(2, 8, DIM)
    y, metrics = layer.eval()(x)
    assert metrics.expert_load[3] == 0
    y.square().sum().backward()
    assert fast_path_ran(poisoned)
    for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
        g = getattr(layer.experts, name).grad
        assert torch.all(g[3] == 0) and torch.isfinite(g).all() and g[:3].abs().sum() > 0, name


def test_packed_layout_follows_expert_group_slot_order():
    layer = make_layer("top_k", k=2, capacity_factor=0.5, batch_priority=True).eval()
    groups = torch.randn(3, 12, DIM)
    routing = layer.router(groups)
    packed = PackedDispatcher(routing, group_size=12)
    # Hand-built order: kept assignments by (expert, group, slot), then the dropped ones in assignment order.
    kept, dropped = [], []
    for g in range(3):
        for a in range(24):
            token = g * 12 + int(routing.token_index[g, a])
            e, slot = int(routing.expert_index[g, a]), int(routing.slot_index[g, a])
            (kept if slot >= 0 else dropped).append(((e, g, slot), token, e))
    kept.sort()
    order = [t for _, t, _ in kept] + [t for _, t, _ in dropped]
    assert packed.token_of_row.tolist() == order
    counts = np.bincount([e for _, _, e in kept], minlength=EXPERTS)
    assert packed.rows.offsets.tolist() == np.cumsum(counts).tolist()
    assert packed.rows.expert_of_row.tolist() == [e for _, _, e in kept] + [EXPERTS] * len(dropped)
    assert packed.rows.offsets.dtype == torch.int32 and packed.rows.max_rows == 3 * routing.capacity


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape = t.numel(), (tuple(t.shape), str(func))
        return out


@pytest.mark.parametrize("router, kw", [("top_k", dict(k=2, capacity_factor=1.25)),
                                        ("expert_choice", dict(capacity_factor=2.0))])
def test_no_dense_dispatch_tensor_on_the_packed_path(router, kw):
    g, s, e, hidden = 2, 32, 16, 8
    k, cf = kw.get("k"), kw["capacity_factor"]
    c = math.ceil(s * (k or 1) * cf / e)
    dense_size = g * s * e * c  # the official einsum dispatcher's [G, S, E, C] one-hot tensors
    rows = g * s * k if k else g * e * c
    # Largest tensors the packed path may make: [R, max(D, H)] rows, the [R, E+1] bias one-hot, [G, S, E] gates.
    packed_bound = max(rows * max(DIM, hidden, e + 1), g * s * e)
    assert packed_bound < dense_size
    sizes = {}
    for impl in ("grouped", "einsum"):
        torch.manual_seed(0)
        layer = MoeMlp(DIM, hidden, e, router=router, dispatcher=impl, capacity_multiple_of=None, **kw)
        x = torch.randn(g, s, DIM, requires_grad=True)
        with LargestTensor() as seen:
            y, m = layer(x)
            (y.square().sum() + m.aux_loss).backward()
        sizes[impl] = seen
    assert sizes["einsum"].numel >= dense_size  # the detector sees the one-hot tensors where they exist
    assert sizes["grouped"].numel <= packed_bound, sizes["grouped"].shape


def test_bf16_matches_float32_on_the_same_routing(poisoned):
    layer = make_layer("top_k", hidden=16, k=2, capacity_factor=0.75).eval()  # bf16 alignment: multiples of 8
    groups = torch.randn(4, 16, DIM)
    with torch.no_grad():  # one routing for both runs; gradients here are those of the experts and the tokens
        routing = layer.router(groups)
    names = EXPERT_PARAMS

    def run(dispatcher, dtype):
        return outputs_and_grads(layer, dispatcher, groups, dtype, lambda y: y.float().sin().sum())

    want = run(IndexDispatcher(routing, 16), torch.float32)
    got = run(PackedDispatcher(routing, 16), torch.bfloat16)
    assert (2, 3, torch.bfloat16) in poisoned
    for name, a, b in zip(["output", "x"] + names, got, want):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel <= (1e-2 if name == "output" else 2e-2), (name, rel)


def test_autocast_matches_the_index_path(poisoned):
    x = torch.randn(2, 16, DIM)
    outs = []
    for impl in ("grouped", "index"):
        layer = make_layer("top_k", hidden=16, dispatcher=impl, k=2, capacity_factor=1.0).eval()
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = layer(xx)
        y.float().sin().sum().backward()
        assert y.dtype == torch.float32 and layer.experts.fc1_weight.grad.dtype == torch.float32
        outs.append((y.detach(), xx.grad))
    assert (2, 3, torch.bfloat16) in poisoned  # the grouped GEMMs ran in the autocast dtype
    for a, b in zip(*outs):
        assert ((a - b).norm() / b.norm()).item() <= 2e-2
