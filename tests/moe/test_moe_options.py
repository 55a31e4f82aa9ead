"""Layer options: the tanh GELU of Flax checkpoints (`gelu_approximate`) and switching Batch Priority Routing on
an existing layer / model (`set_batch_priority`), against the float64 per-token loop and hand formulas."""
import math

import numpy as np
import pytest
import torch

from moe_loop_reference import top_k_loop
from sparsevision import create_model
from sparsevision.models import vmoe  # noqa: F401  (registers the V-MoE names)
from sparsevision.moe import Experts, MoeMlp

DIM, HIDDEN, EXPERTS = 6, 10, 4


def layer_with(dispatcher="index", **kw):
    torch.manual_seed(0)
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, router="top_k", dispatcher=dispatcher, capacity_multiple_of=None, **kw)
    with torch.no_grad():
        layer.router.gate.weight.mul_(3.0)
    return layer.double().eval()


def test_experts_tanh_gelu_matches_the_formula():
    experts = Experts(EXPERTS, DIM, HIDDEN, gelu_approximate="tanh").double()
    x = torch.randn(EXPERTS, 5, DIM, dtype=torch.float64)
    y = experts(x)
    for e in range(EXPERTS):
        h = x[e] @ experts.fc1_weight[e] + experts.fc1_bias[e]
        act = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        torch.testing.assert_close(y[e], act @ experts.fc2_weight[e] + experts.fc2_bias[e])
    exact = Experts(EXPERTS, DIM, HIDDEN).double()
    exact.load_state_dict(experts.state_dict())
    assert exact.gelu_approximate == "none" and not torch.allclose(exact(x), y, atol=1e-6)


@pytest.mark.parametrize("dispatcher", ["index", "einsum", "grouped"])
def test_moe_tanh_gelu_matches_loop(dispatcher):
    layer = layer_with(dispatcher, k=2, capacity_factor=0.5, gelu_approximate="tanh")
    assert layer.experts.gelu_approximate == "tanh"
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    # The loop applies Hendrycks & Gimpel's tanh formula because the experts say "tanh".
    ref, _, _ = top_k_loop(layer, x, 2, math.ceil(12 * 2 * 0.5 / EXPERTS), group_size=12, batch_priority=False)
    np.testing.assert_allclose(layer(x)[0].detach().numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("build", [lambda: Experts(EXPERTS, DIM, HIDDEN, gelu_approximate="fast"),
                                   lambda: MoeMlp(DIM, HIDDEN, EXPERTS, gelu_approximate="erf")])
def test_bad_gelu_approximation_is_an_error(build):
    with pytest.raises(ValueError, match="gelu_approximate"):
        build()


@pytest.mark.parametrize("dispatcher", ["index", "grouped"])
def test_set_batch_priority_switches_the_buffer_order(dispatcher):
    layer = layer_with(dispatcher, k=1, capacity_factor=0.5)
    x = torch.randn(2, 16, DIM, dtype=torch.float64)
    capacity = math.ceil(16 * 0.5 / EXPERTS)
    for enabled in (True, False):
        layer.set_batch_priority(enabled)
        assert layer.router.batch_priority is enabled
        ref, dropped, _ = top_k_loop(layer, x, 1, capacity, group_size=16, batch_priority=enabled)
        y, metrics = layer(x)
        np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-10)
        assert {t for t, v in enumerate(metrics.top_expert.reshape(-1).tolist()) if v == -1} == {t for t, _ in dropped}


def test_set_batch_priority_is_a_no_op_without_buffer_order():
    for router, kw in (("expert_choice", {}), ("soft", dict(num_slots=2))):
        layer = MoeMlp(DIM, HIDDEN, EXPERTS, router=router, **kw)
        layer.set_batch_priority(True)
        assert not hasattr(layer.router, "batch_priority")


def test_model_set_batch_priority_goes_through_every_layer(monkeypatch):
    model = create_model("vmoe_tiny_test")
    seen = []
    monkeypatch.setattr(MoeMlp, "set_batch_priority", lambda self, enabled: seen.append((self, enabled)))
    model.set_batch_priority(True)
    assert [layer for layer, _ in seen] == model.moe_mlps() and all(on is True for _, on in seen)
    monkeypatch.undo()
    model.set_batch_priority(True)
    assert all(m.router.batch_priority for m in model.moe_mlps())
    model.set_batch_priority(False)
    assert not any(m.router.batch_priority for m in model.moe_mlps())
