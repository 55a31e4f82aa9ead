import math

import numpy as np
import pytest
import torch

from sparsevision.models import create_model, list_models
from sparsevision.models.vmoe import QkNormAttention, VisionMoE, parse_moe_layers
from sparsevision.models.vmoe_analysis import plot_routing_heatmaps, routing_heatmap
from sparsevision.moe import MoeMlp


def build_meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- placement rules

@pytest.mark.parametrize("spec, depth, expected", [
    # get_vmoe_config "Every 2" on B (12 blocks) and "Last 2" on S (8 blocks): the released checkpoints.
    ("every-2", 12, (1, 3, 5, 7, 9, 11)),
    ("every-3", 12, (2, 5, 8, 11)),
    ("last-2", 8, (5, 7)),
    ("last-5", 12, (3, 5, 7, 9, 11)),
    # Soft MoE configs: tuple(range(num_layers))[-last_n:].
    ("final-6", 12, (6, 7, 8, 9, 10, 11)),
    ("all", 3, (0, 1, 2)),
    ("none", 3, ()),
    ((3, 1), 4, (1, 3)),
])
def test_parse_moe_layers_official_rules(spec, depth, expected):
    assert parse_moe_layers(spec, depth) == expected


@pytest.mark.parametrize("spec, match", [
    ("every-0", "N must be >= 1"), ("every-13", "selects no block"), ("last-7", "only 6 odd blocks"),
    ("final-13", "only 12 blocks"), ("half", "expected 'every-N'"), ((0, 12), r"\[0, 11\]"), ((1, 1), "distinct"),
])
def test_parse_moe_layers_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_moe_layers(spec, 12)


# ----------------------------------------------------------------------------------------------- registered sizes

def test_registered_names():
    for name in ["vmoe_s32", "vmoe_s16", "vmoe_b16", "vmoe_l16", "vmoe_tiny_test", "soft_moe_s16", "soft_moe_b16",
                 "soft_moe_tiny_test", "expert_choice_tiny_test"]:
        assert name in list_models()


@pytest.mark.parametrize("name, width, depth, mlp, heads, layers, experts", [
    ("vmoe_s32", 512, 8, 2048, 8, (5, 7), 8),
    ("vmoe_b16", 768, 12, 3072, 12, (1, 3, 5, 7, 9, 11), 8),
    ("vmoe_l16", 1024, 24, 4096, 16, tuple(range(1, 24, 2)), 32),
])
def test_vmoe_sizes_match_get_vmoe_config(name, width, depth, mlp, heads, layers, experts):
    model = build_meta(name, num_classes=1000)
    assert (model.width, len(model.blocks), model.moe_layers) == (width, depth, layers)
    assert model.blocks[0].attn.num_heads == heads and model.blocks[0].mlp.fc1.out_features == mlp
    assert model.pool == "token" and model.num_features == width  # representation_size = hidden_size
    moe = model.blocks[layers[0]].mlp
    assert isinstance(moe, MoeMlp) and moe.num_experts == experts and moe.router.k == 2
    assert moe.router.capacity_factor == 1.05 and moe.router.importance_loss_weight == 0.005
    assert moe.router.load_loss_weight == 0.005 and moe.router.noise_std == 1.0 and not moe.router.batch_priority


def test_vmoe_b16_parameter_count_from_formula():
    d, mlp, depth, e, patches, classes = 768, 3072, 12, 8, 196, 1000
    attn = 2 * 2 * d + 3 * d * d + 3 * d + d * d + d
    dense = d * mlp + mlp + mlp * d + d
    moe = e * dense + d * e  # experts + bias-free router
    total = (3 * 16 * 16 * d + d) + d + (patches + 1) * d + depth * attn + 6 * dense + 6 * moe + 2 * d
    total += d * d + d + d * classes + classes  # pre-logits + head
    assert n_params(build_meta("vmoe_b16", num_classes=classes)) == total


@pytest.mark.parametrize("name, overrides, paper", [
    # V-MoE paper Table 8 (JFT-300M, 18,291 classes, E=32, K=2): B/16 979M, L/16 3.4B, H/14 Every-2 7.2B, Last-5 2.7B.
    ("vmoe_b16", dict(num_experts=32), 979e6),
    ("vmoe_l16", {}, 3.4e9),
    ("vmoe_h14", {}, 7.2e9),
    ("vmoe_h14", dict(moe_layers="last-5"), 2.7e9),
])
def test_vmoe_parameter_counts_match_paper(name, overrides, paper):
    count = n_params(build_meta(name, num_classes=18_291, **overrides))
    digits = 3 if paper < 1e9 else 2  # the paper's rounding
    assert float(f"{count:.{digits}g}") == paper


def test_soft_moe_s16_matches_paper_size():
    # Soft MoE paper (Table 2 / Table 9): Soft MoE S/16 with 128 experts has 933M parameters (JFT-4B head, 29,593
    # classes in the official config).
    model = build_meta("soft_moe_s16", num_classes=29_593)
    assert abs(n_params(model) / 933e6 - 1) < 0.005
    assert model.moe_layers == tuple(range(6, 12)) and model.pool == "gap"
    moe = model.blocks[6].mlp
    assert moe.router.num_slots == 1 and moe.num_experts == 128
    assert isinstance(model.blocks[0].attn, QkNormAttention)


def test_vmoe_head_bias_is_minus_log_classes():
    model = create_model("vmoe_tiny_test", num_classes=7)
    torch.testing.assert_close(model.head.bias, torch.full((7,), -math.log(7)))
    assert torch.count_nonzero(model.head.weight) == 0


# ------------------------------------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("name", ["vmoe_tiny_test", "soft_moe_tiny_test", "expert_choice_tiny_test"])
def test_forward_and_aux_sum(name):
    torch.manual_seed(0)
    model = create_model(name, head_zero_init=False).train()
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 10)
    assert len(aux["moe"]) == len(model.moe_layers) == 2
    # Official EncoderMoe sums the blocks' auxiliary losses.
    torch.testing.assert_close(aux["aux_loss"], aux["moe"][0].aux_loss + aux["moe"][1].aux_loss)
    (logits.sum() + aux["aux_loss"]).backward()
    router = model.blocks[model.moe_layers[0]].mlp.router
    grad = router.gate.weight.grad if hasattr(router, "gate") else router.mu.grad
    assert grad is not None and torch.isfinite(grad).all()


def _expected_capacity(tokens, k, factor, experts):
    # V-MoE Sec. 2.2: C = ceil(k * S * c / E), padded to a multiple of 4 as vmoe.moe.compute_capacity.
    c = math.ceil(k * tokens * factor / experts)
    return c + (-c) % 4


def test_set_capacity_factor_reaches_every_layer():
    model = create_model("vmoe_tiny_test").eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = 17  # 4x4 patches + class token, one group per image
    for factor in (0.5, 1.0, 2.0):
        model.set_capacity_factor(eval=factor)
        _, aux = model(x, return_aux=True)
        assert [m.capacity for m in aux["moe"]] == [_expected_capacity(tokens, 2, factor, 4)] * 2
    model.train()
    model.set_capacity_factor(train=0.25)
    _, aux = model(x, return_aux=True)
    assert [m.capacity for m in aux["moe"]] == [_expected_capacity(tokens, 2, 0.25, 4)] * 2
    with pytest.raises(ValueError, match="eval capacity factor"):
        model.set_capacity_factor(eval=0.0)


def test_set_batch_priority():
    model = create_model("vmoe_tiny_test")
    model.set_batch_priority(True)
    assert all(m.router.batch_priority for m in model.moe_mlps())
    model.set_batch_priority(False)
    assert not any(m.router.batch_priority for m in model.moe_mlps())


def test_qk_norm_attention_matches_float64_reference():
    torch.manual_seed(0)
    attn = QkNormAttention(8, 2).double()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    w, b = attn.qkv.weight.detach().numpy(), attn.qkv.bias.detach().numpy()
    qkv = x.numpy() @ w.T + b
    q, k, v = (qkv[..., i * 8:(i + 1) * 8].reshape(2, 5, 2, 4) for i in range(3))

    def ln(t, scale):
        mu = t.mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * scale

    q, k = ln(q, attn.q_norm.weight.detach().numpy()), ln(k, attn.k_norm.weight.detach().numpy())
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(2, 5, 8)
    out = out @ attn.proj.weight.detach().numpy().T + attn.proj.bias.detach().numpy()
    np.testing.assert_allclose(attn(x).detach().numpy(), out, atol=1e-10)


def test_moe_arguments_reach_layers():
    model = VisionMoE(img_size=16, patch_size=8, num_classes=3, width=16, depth=2, num_heads=2, mlp_dim=32,
                      moe_layers=(0,), num_experts=3, k=1, capacity_factor=2.0, eval_capacity_factor=0.5,
                      batch_priority=True, group_size=10, noise_std=0.5)
    moe = model.blocks[0].mlp
    assert isinstance(moe, MoeMlp) and not isinstance(model.blocks[1].mlp, MoeMlp)
    r = moe.router
    assert (r.k, r.capacity_factor, r.eval_capacity_factor, r.batch_priority, r.noise_std) == (1, 2.0, 0.5, True, 0.5)
    assert moe.group_size == 10
    logits = model(torch.randn(2, 3, 16, 16))  # 2 images x 5 tokens = one group of 10
    assert logits.shape == (2, 3)


# ------------------------------------------------------------------------------------------------ routing heat map

def test_routing_heatmap_counts_first_choices(tmp_path):
    torch.manual_seed(0)
    model = create_model("vmoe_tiny_test", eval_capacity_factor=4.0)
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 9])
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    counts = routing_heatmap(model, batches, num_classes=10)
    assert len(counts) == 2 and counts[0].shape == (4, 10)
    # Independent count: the first choice is the argmax of the router softmax on each block's normalised input.
    expected = [torch.zeros(4, 10, dtype=torch.long) for _ in range(2)]
    model.eval()
    with torch.no_grad():
        for x, y in batches:
            h = model.embed(x)
            layer = 0
            for block in model.blocks:
                if isinstance(block.mlp, MoeMlp):
                    inp = block.norm2(h + block.attn(block.norm1(h)))
                    top = (inp @ block.mlp.router.gate.weight.T).argmax(-1)[:, 1:]  # patches only
                    for img in range(x.shape[0]):
                        for e in top[img]:
                            expected[layer][e, y[img]] += 1
                    layer += 1
                h, _ = block(h)
    for got, want in zip(counts, expected):
        torch.testing.assert_close(got, want)
    assert int(counts[0].sum()) == 6 * 16  # nothing dropped at eval capacity 4
    plot_routing_heatmaps(counts, tmp_path / "routing.png", class_names=[str(i) for i in range(10)])
    assert (tmp_path / "routing.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        routing_heatmap(model, [(images[:1], torch.tensor([10]))], num_classes=10)


def test_capacity_rounding_reaches_the_routers():
    # Soft MoE paper's expert-choice configs round capacity with multiple_of=1 (S/16, E=128: 2 tokens, not 4).
    from sparsevision.moe import compute_capacity

    model = create_model("expert_choice_tiny_test", num_experts=8, capacity_ceil_or_round="round",
                         capacity_multiple_of=1)
    for mlp in model.moe_mlps():
        assert (mlp.router.ceil_or_round, mlp.router.multiple_of) == ("round", 1)
    assert compute_capacity(16, 8, 1.0, "round", multiple_of=1) == 2
    _, aux = create_model("expert_choice_tiny_test", num_experts=8)(torch.randn(3, 3, 32, 32), return_aux=True)
    assert [m.capacity for m in aux["moe"]] == [4, 4]  # default: ceil, then up to a multiple of 4
    _, aux = model(torch.randn(3, 3, 32, 32), return_aux=True)
    assert [m.capacity for m in aux["moe"]] == [2, 2]
