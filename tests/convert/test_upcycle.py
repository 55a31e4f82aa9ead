import pytest
import torch

from sparsevision.convert import upcycle_vit_to_moe
from sparsevision.models.vit import VisionTransformer
from sparsevision.models.vmoe import VisionMoE

DIMS = dict(img_size=16, patch_size=4, num_classes=5, width=16, depth=4, num_heads=2, mlp_dim=24)


def dense_model(seed=0, **kw):
    torch.manual_seed(seed)
    model = VisionTransformer(head_zero_init=False, **{**DIMS, **kw}).double().eval()
    with torch.no_grad():  # move biases / norms off their init so that a missed copy would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def moe_model(**kw):
    defaults = dict(moe_layers=(1, 3), num_experts=4, k=2, eval_capacity_factor=4.0, pool="token")
    return VisionMoE(**{**DIMS, **defaults, **kw}).double().eval()


def test_copies_everything_and_fills_every_expert():
    dense, moe = dense_model(), moe_model()
    router_before = moe.blocks[1].mlp.router.gate.weight.detach().clone()
    report = upcycle_vit_to_moe(dense, moe)
    assert report.ok
    d, m = dense.state_dict(), moe.state_dict()
    for name, value in d.items():
        if name.startswith(("blocks.1.mlp.", "blocks.3.mlp.")):
            continue
        torch.testing.assert_close(m[name], value, rtol=0, atol=0)
    for i in (1, 3):
        ex = moe.blocks[i].mlp.experts
        for e in range(4):
            torch.testing.assert_close(ex.fc1_weight[e], d[f"blocks.{i}.mlp.fc1.weight"].T, rtol=0, atol=0)
            torch.testing.assert_close(ex.fc1_bias[e], d[f"blocks.{i}.mlp.fc1.bias"], rtol=0, atol=0)
            torch.testing.assert_close(ex.fc2_weight[e], d[f"blocks.{i}.mlp.fc2.weight"].T, rtol=0, atol=0)
            torch.testing.assert_close(ex.fc2_bias[e], d[f"blocks.{i}.mlp.fc2.bias"], rtol=0, atol=0)
    torch.testing.assert_close(moe.blocks[1].mlp.router.gate.weight, router_before, rtol=0, atol=0)


def test_top_k_layer_output_is_gate_sum_times_dense_mlp():
    dense, moe = dense_model(), moe_model(k=2)
    upcycle_vit_to_moe(dense, moe)
    x = torch.randn(3, 17, 16, dtype=torch.float64)
    out, metrics = moe.blocks[1].mlp(x)
    assert float(metrics.dropped_fraction) == 0.0
    gates = (x @ moe.blocks[1].mlp.router.gate.weight.T).softmax(-1)  # official: softmax over E, top-k, no renorm
    gate_sum = gates.topk(2, dim=-1).values.sum(-1, keepdim=True)
    want = gate_sum * dense.blocks[1].mlp(x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    assert float((gate_sum - 1).abs().min().detach()) > 1e-3  # the relation is not the trivial one


def test_top_all_experts_model_equals_dense_model():
    # With k = E every token's kept gates sum to one, so the upcycled network is the dense one.
    dense, moe = dense_model(), moe_model(k=4)
    upcycle_vit_to_moe(dense, moe)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-10, atol=1e-10)


def test_expert_choice_taking_all_tokens_equals_dense():
    dense = dense_model(pool="gap")
    moe = moe_model(pool="gap", router="expert_choice", eval_capacity_factor=4.0)  # capacity = 16 = all tokens
    upcycle_vit_to_moe(dense, moe)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-10, atol=1e-10)


def test_soft_moe_upcycles_and_from_file(tmp_path):
    from safetensors.torch import save_file

    dense = dense_model(pool="gap")
    save_file(dense.state_dict(), tmp_path / "dense.safetensors")
    moe = moe_model(pool="gap", router="soft", num_slots=2)
    report = upcycle_vit_to_moe(tmp_path / "dense.safetensors", moe)
    assert report.ok and "blocks.3.mlp.experts (x4)" in report.loaded
    torch.testing.assert_close(moe.blocks[3].mlp.experts.fc2_bias[2], dense.blocks[3].mlp.fc2.bias)


def test_mismatches_are_named():
    with pytest.raises(ValueError) as err:
        upcycle_vit_to_moe(dense_model(mlp_dim=32), moe_model())
    msg = str(err.value)
    assert "blocks.1.mlp.fc1.weight: checkpoint (32, 16), model expects (24, 16)" in msg
    assert "blocks.0.mlp.fc1.weight: checkpoint (32, 16), model expects (24, 16)" in msg
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q_norm\.weight"):
        upcycle_vit_to_moe(dense_model(), moe_model(qk_norm=True))
    with pytest.raises(ValueError, match="needs a VisionMoE"):
        upcycle_vit_to_moe(dense_model(), dense_model())
