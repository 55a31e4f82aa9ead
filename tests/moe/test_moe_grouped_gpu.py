"""GPU checks of the packed path (dispatcher="grouped"): bf16 grouped GEMMs against a float32 reference on the
same routing, the whole layer against the index path, no host syncs, zero gradients for experts without tokens,
and autocast. Skipped without CUDA; `benchmarks/device_check.sh` runs them. `SPARSEVISION_GPU_TEST_DEVICE=cpu`
runs the same checks on the CPU (where `torch._grouped_mm` also takes bf16), to debug them without a GPU.

Tolerances (relative Frobenius error ||a - b|| / ||b||, bf16 operands with float32 accumulation): outputs <= 1e-2,
gradients <= 2e-2; bf16 vs bf16 (grouped vs index, same routing, different summation order) the same bounds.
"""
import os

import pytest
import torch

from dispatch_grads import EXPERT_PARAMS, outputs_and_grads
from sparsevision.moe import IndexDispatcher, MoeMlp, PackedDispatcher
from sparsevision.moe import grouped

DEVICE = torch.device(os.environ.get("SPARSEVISION_GPU_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
pytestmark = pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")
DIM, HIDDEN, EXPERTS = 256, 512, 8  # multiples of 8: bf16 rows are 16-byte aligned for the grouped GEMM
GROUPS, GROUP_SIZE = 8, 196


def fast_path_expected() -> bool:
    if not ON_CUDA:
        return True
    return torch.cuda.get_device_capability(DEVICE)[0] in grouped.FAST_CUDA_MAJORS and not torch.version.hip


@pytest.fixture
def gmm_calls(monkeypatch):
    calls = []
    real = grouped._gmm

    def spy(a, b, offs):
        calls.append((a.dim(), b.dim(), a.dtype))
        return real(a, b, offs)

    monkeypatch.setattr(grouped, "_gmm", spy)
    return calls


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


def make_layer(router="top_k", **kw) -> MoeMlp:
    torch.manual_seed(0)
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router=router, **kw).to(DEVICE)
    with torch.no_grad():  # biases far from zero, so the bias paths are checked too
        for b in (layer.experts.fc1_bias, layer.experts.fc2_bias):
            b.normal_(std=0.5)
    return layer


@pytest.mark.parametrize("router, kw", [("top_k", dict(k=1, capacity_factor=1.0)),
                                        ("top_k", dict(k=2, capacity_factor=1.25, batch_priority=True)),
                                        ("expert_choice", dict(capacity_factor=1.0))])
def test_bf16_packed_matches_float32_reference(gmm_calls, router, kw):
    layer = make_layer(router, **kw).eval()
    groups = torch.randn(GROUPS, GROUP_SIZE, DIM, device=DEVICE)
    with torch.no_grad():
        routing = layer.router(groups)
    names = EXPERT_PARAMS
    r = torch.randn(GROUPS, GROUP_SIZE, DIM, device=DEVICE)

    def run(dispatcher, dtype):
        return outputs_and_grads(layer, dispatcher, groups, dtype, lambda y: (y.float() * r).sum())

    want = run(IndexDispatcher(routing, GROUP_SIZE), torch.float32)
    # Twice: the second run gets recycled allocator blocks, so the undefined rows hold stale data, not zeros.
    first = run(PackedDispatcher(routing, GROUP_SIZE), torch.bfloat16)
    second = run(PackedDispatcher(routing, GROUP_SIZE), torch.bfloat16)
    if fast_path_expected():
        assert (2, 3, torch.bfloat16) in gmm_calls and (2, 2, torch.bfloat16) in gmm_calls
    for name, a, b, w in zip(["output", "x"] + names, first, second, want):
        assert torch.equal(a, b), f"{name}: not deterministic"
        assert rel(a, w) <= (1e-2 if name == "output" else 2e-2), (name, rel(a, w))


@pytest.mark.parametrize("train", [False, True])
def test_whole_layer_grouped_matches_index_in_bf16(gmm_calls, train):
    x = torch.randn(GROUPS, GROUP_SIZE, DIM, device=DEVICE, dtype=torch.bfloat16)
    results = []
    for impl in ("grouped", "index"):
        layer = make_layer("top_k", k=2, capacity_factor=1.0, dispatcher=impl).to(torch.bfloat16).train(train)
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(1)  # the same routing noise for both
        y, metrics = layer(xx)
        (y.float().sin().sum() + metrics.aux_loss).backward()
        results.append([y.detach(), xx.grad] + [p.grad for p in layer.parameters()])
    if fast_path_expected():
        assert (2, 3, torch.bfloat16) in gmm_calls
    names = ["output", "x"] + [n for n, _ in make_layer().named_parameters()]
    for name, a, b in zip(names, *results):
        assert rel(a, b) <= (1e-2 if name == "output" else 2e-2), (name, rel(a, b))


@pytest.mark.skipif(not ON_CUDA, reason="host syncs only exist with a device")
@pytest.mark.parametrize("router, kw", [("top_k", dict(k=2, capacity_factor=1.25)),
                                        ("expert_choice", dict(capacity_factor=1.0)),
                                        # 3-image groups: 2 full groups and a remainder group of 2 images
                                        ("top_k", dict(k=2, capacity_factor=1.25, group_images=3))])
def test_no_host_sync_in_forward_and_backward(router, kw):
    layer = make_layer(router, dispatcher="grouped", **kw).to(torch.bfloat16).train()
    x = torch.randn(GROUPS, GROUP_SIZE, DIM, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)

    def step():
        y, metrics = layer(x)
        (y.float().square().mean() + metrics.aux_loss).backward()

    step()  # first call: lazy initialisation (cuBLAS handles, capability queries) may sync, that is fine
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_expert_without_tokens_gets_zero_gradients(gmm_calls):
    layer = make_layer("top_k", k=2, capacity_factor=2.0, dispatcher="grouped").to(torch.bfloat16)
    with torch.no_grad():
        layer.router.gate.weight.abs_()
        layer.router.gate.weight[EXPERTS - 1] = -1.0  # positive inputs: the last expert never wins
    x = torch.rand(GROUPS, GROUP_SIZE, DIM, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(2):  # the second pass reuses freed blocks
        layer.zero_grad(set_to_none=True)
        y, metrics = layer.eval()(x)
        y.float().square().mean().backward()
        assert metrics.expert_load[-1].item() == 0
        for name in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"):
            g = getattr(layer.experts, name).grad
            assert torch.isfinite(g).all() and torch.all(g[-1] == 0) and g[:-1].abs().sum() > 0, name
    if fast_path_expected():
        assert (2, 2, torch.bfloat16) in gmm_calls


def test_autocast_fp32_parameters(gmm_calls):
    x = torch.randn(GROUPS, GROUP_SIZE, DIM, device=DEVICE)
    results = []
    for impl in ("grouped", "index"):
        layer = make_layer("top_k", k=2, capacity_factor=1.25, dispatcher=impl).eval()
        xx = x.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y, _ = layer(xx)
        y.float().sin().sum().backward()
        assert y.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in layer.parameters())
        results.append([y.detach(), xx.grad, layer.experts.fc1_weight.grad, layer.experts.fc2_bias.grad])
    if fast_path_expected():
        assert (2, 3, torch.bfloat16) in gmm_calls
    for name, a, b in zip(["output", "x", "fc1_weight", "fc2_bias"], *results):
        assert rel(a, b) <= (1e-2 if name == "output" else 2e-2), (name, rel(a, b))
