"""MoeMlp under torch.compile: every router and dispatcher traces into one graph (fullgraph=True: no graph break,
no host sync), and the traced forward and backward compute what eager does. The aot_eager backend runs the traced
graphs op by op, so this checks tracing without paying for code generation; on a GPU, inductor fuses the router's
small ops (benchmarks/moe_layer.py --compile)."""
import pytest
import torch

from sparsevision import create_model
from sparsevision.moe import MoeMlp

CASES = {
    "top_k-grouped": dict(router="top_k", k=2, dispatcher="grouped"),
    "top_k-grouped-bf16": dict(router="top_k", k=2, dispatcher="grouped", dtype=torch.bfloat16),
    "top_k-index-remainder": dict(router="top_k", k=2, dispatcher="index", group_size=100),
    "expert_choice-grouped": dict(router="expert_choice", dispatcher="grouped"),
    "soft": dict(router="soft", num_slots=2),
}


@pytest.mark.parametrize("case", CASES)
def test_layer_compiles_to_one_graph_with_eager_gradients(case):
    kwargs = dict(CASES[case])
    dtype = kwargs.pop("dtype", torch.float32)
    torch.manual_seed(0)
    layer = MoeMlp(16, 32, 4, capacity_factor=1.25, noise_std=0.0, **kwargs).to(dtype).train()
    x = torch.randn(4, 49, 16, dtype=dtype, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)

    def run(module):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, metrics = module(x)
        (y.float().square().mean() + metrics.aux_loss).backward()
        return y.detach(), metrics, x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()}

    y_eager, m_eager, dx_eager, grads_eager = run(layer)
    y_compiled, m_compiled, dx_compiled, grads_compiled = run(compiled)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(y_compiled, y_eager, **tol)
    torch.testing.assert_close(dx_compiled, dx_eager, **tol)
    for name, grad in grads_eager.items():
        torch.testing.assert_close(grads_compiled[name], grad, **tol, msg=lambda m: f"{name}: {m}")
    assert torch.equal(m_compiled.top_expert, m_eager.top_expert)
    assert m_compiled.dropped_fraction == m_eager.dropped_fraction


@pytest.mark.parametrize("name, overrides", [("vmoe_tiny_test", dict(dispatcher="grouped", group_images=8)),
                                             ("soft_moe_tiny_test", {}), ("expert_choice_tiny_test", {})])
def test_models_trace_without_graph_breaks(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(10, 3, 32, 32), return_aux=True)
    assert explanation.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_count == 1
