"""MoeMlp as a whole: gradients (gradcheck in float64), determinism, group handling, errors, capacity changes,
upcycling, and the metrics helpers."""
import pytest
import torch
from torch.func import functional_call

from sparsevision.layers import Mlp
from sparsevision.moe import Experts, MoeMetrics, MoeMlp, average_metrics, total_aux_loss

DIM, HIDDEN, EXPERTS = 3, 4, 3
# Every dispatcher computes the same function; "grouped" runs its padded-bmm fallback at these odd sizes and in
# float64 (test_moe_grouped.py drives torch._grouped_mm itself).
DISPATCHERS = ["index", "einsum", "grouped"]


def tiny(router, dispatcher, **kw):
    torch.manual_seed(0)
    extra = dict(k=2, capacity_factor=0.7, capacity_multiple_of=None) if router == "top_k" else {}
    if router == "expert_choice":
        extra = dict(capacity_factor=1.0, capacity_multiple_of=None)
    if router == "soft":
        extra = dict(num_slots=2, noise_std=0.0)
    return MoeMlp(DIM, HIDDEN, EXPERTS, router=router, dispatcher=dispatcher, **extra, **kw).double()


@pytest.mark.parametrize("router", ["top_k", "expert_choice", "soft"])
@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_gradcheck_reaches_router_and_experts(router, dispatcher):
    layer = tiny(router, dispatcher).train()
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(2, 4, DIM, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        torch.manual_seed(1)  # the same routing noise on every call, so the function is deterministic
        y, m = functional_call(layer, dict(zip(names, params)), (x,))
        return y, m.aux_loss

    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)
    y, m = f(x, *params)
    grads = torch.autograd.grad(y.square().sum(), params, allow_unused=True)
    # The task loss alone trains the router (through the combine weights) and every expert.
    for name, g in zip(names, grads):
        assert g is not None and g.abs().sum() > 0, name


def test_top_k_gradcheck_includes_load_loss():
    layer = tiny("top_k", "index", importance_loss_weight=0.0, load_loss_weight=1.0).train()
    gate = layer.router.gate.weight.detach().clone().requires_grad_(True)
    x = torch.randn(1, 6, DIM, dtype=torch.float64)

    def f(w):
        torch.manual_seed(2)
        return functional_call(layer, {"router.gate.weight": w}, (x,), strict=False)[1].aux_loss

    assert f(gate).item() > 0
    assert torch.autograd.gradcheck(f, (gate,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dispatcher", DISPATCHERS)
def test_dispatchers_agree_on_values_and_gradients(dispatcher):
    ref, other = tiny("top_k", "einsum"), tiny("top_k", dispatcher)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    for layer in (ref, other):
        layer.eval()
        y, m = layer(x)
        (y.sin().sum() + m.aux_loss).backward()
    for (n, p), q in zip(ref.named_parameters(), other.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("router", ["top_k", "expert_choice"])
def test_eval_is_deterministic_training_is_noisy(router):
    layer = tiny(router, "index")
    x = torch.randn(4, 6, DIM, dtype=torch.float64)
    layer.eval()
    y1, m1 = layer(x)
    y2, m2 = layer(x)
    assert torch.equal(y1, y2) and torch.equal(m1.top_expert, m2.top_expert)
    layer.train()
    assert not torch.equal(layer(x)[0], layer(x)[0])


def test_group_size_none_is_one_group_per_image():
    a, b = tiny("top_k", "index").eval(), tiny("top_k", "index", group_size=5).eval()
    x = torch.randn(3, 5, DIM, dtype=torch.float64)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    # Routing is per group: an image's output doesn't depend on the other images in its batch.
    torch.testing.assert_close(a(x)[0][:1], a(x[:1])[0])


def test_set_capacity_factor_train_and_eval():
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, k=1, capacity_factor=1.0, capacity_multiple_of=None)
    x = torch.randn(2, 12, DIM)
    assert layer.train()(x)[1].capacity == 4
    layer.set_capacity_factor(eval=0.5)
    assert layer.eval()(x)[1].capacity == 2 and layer.train()(x)[1].capacity == 4
    layer.set_capacity_factor(train=2.0)
    assert layer.train()(x)[1].capacity == 8


@pytest.mark.parametrize("kwargs, x_shape, match", [
    (dict(group_size=5, group_images=2), None, "not both"),
    (dict(group_images=0), None, "group_images"),
    (dict(group_images=1.5), None, "group_images"),
    (dict(k=4), None, "k=4"),
    (dict(capacity_factor=0.1, capacity_ceil_or_round="round"), (1, 4, DIM), "capacity"),
    (dict(router="switch"), None, "router"),
    (dict(dispatcher="fast"), None, "dispatcher"),
    (dict(group_size=0), None, "group_size"),
    (dict(), (2, 4, DIM + 1), "shape"),
    (dict(), (8, DIM), "shape"),
    (dict(), (0, 4, DIM), "no tokens"),
])
def test_errors(kwargs, x_shape, match):
    with pytest.raises(ValueError, match=match):
        layer = MoeMlp(DIM, HIDDEN, EXPERTS, **kwargs)
        layer(torch.randn(*x_shape))


def test_upcycling_copies_the_dense_mlp_into_every_expert():
    torch.manual_seed(0)
    dense = Mlp(DIM, HIDDEN).double()
    experts = Experts(EXPERTS, DIM, HIDDEN).double()
    experts.load_dense_mlp_(dense.fc1.weight, dense.fc1.bias, dense.fc2.weight, dense.fc2.bias)
    x = torch.randn(EXPERTS, 5, DIM, dtype=torch.float64)
    torch.testing.assert_close(experts(x), dense(x))
    # Upcycled top-1 MoE with room for every token: output = (top gate) * dense MLP(x).
    layer = MoeMlp(DIM, HIDDEN, EXPERTS, k=1, capacity_factor=float(EXPERTS)).double().eval()
    layer.load_dense_mlp_(dense.fc1.weight, dense.fc1.bias, dense.fc2.weight, dense.fc2.bias)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    top_gate = torch.softmax(x @ layer.router.gate.weight.T, -1).max(-1).values
    torch.testing.assert_close(layer(x)[0], top_gate[..., None] * dense(x))
    with pytest.raises(ValueError, match="fc1_weight"):
        experts.load_dense_mlp_(dense.fc1.weight.T, dense.fc1.bias, dense.fc2.weight, dense.fc2.bias)


def test_expert_parameter_layout_and_shared_init():
    e = Experts(EXPERTS, DIM, HIDDEN)
    assert e.fc1_weight.shape == (EXPERTS, DIM, HIDDEN) and e.fc2_weight.shape == (EXPERTS, HIDDEN, DIM)
    assert e.fc1_bias.shape == (EXPERTS, HIDDEN) and e.fc2_bias.shape == (EXPERTS, DIM)
    assert not torch.equal(e.fc1_weight[0], e.fc1_weight[1])
    shared = Experts(EXPERTS, DIM, HIDDEN, shared_init=True)
    assert all(torch.equal(shared.fc1_weight[0], shared.fc1_weight[i]) for i in range(EXPERTS))
    # Each expert is its own MLP: a buffer row is processed by its expert's weights only.
    x = torch.randn(EXPERTS, 2, DIM)
    y = e(x)
    for i in range(EXPERTS):
        h = torch.nn.functional.gelu(x[i] @ e.fc1_weight[i] + e.fc1_bias[i])
        torch.testing.assert_close(y[i], h @ e.fc2_weight[i] + e.fc2_bias[i])


def test_average_and_total_metrics():
    def m(a, d, load):
        t = torch.tensor
        return MoeMetrics(aux_loss=t(a, requires_grad=True), importance_loss=t(a), load_loss=t(0.0),
                          gshard_loss=t(0.0), dropped_fraction=t(d), expert_load=t(load), capacity=4)

    ms = [m(1.0, 0.2, [1.0, 0.0]), m(3.0, 0.4, [0.5, 0.5])]
    avg = average_metrics(ms)
    assert avg.aux_loss.item() == 2.0 and avg.dropped_fraction.item() == pytest.approx(0.3)
    assert avg.aux_loss.requires_grad and avg.capacity is None
    torch.testing.assert_close(avg.expert_load, torch.tensor([0.75, 0.25]))
    assert total_aux_loss(ms).item() == 4.0
    assert avg.to_dict()["aux_loss"] == 2.0
    with pytest.raises(ValueError, match="empty"):
        average_metrics([])
