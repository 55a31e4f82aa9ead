"""LIMoE: one shared encoder for both modalities, entropy losses against a float64 numpy recomputation, padding
invariance, expert statistics, registry and errors."""
import math

import numpy as np
import pytest
import torch

from sparsevision.models import create_model
from sparsevision.models.limoe import LIMoE
from sparsevision.moe import MoeMlp
from sparsevision.text import ByteTokenizer
from sparsevision.utils.flops import count_flops


def tiny(**kw):
    args = dict(img_size=16, patch_size=8, vocab_size=259, max_len=24, width=32, depth=2, num_heads=2, mlp_dim=64,
                embed_dim=16, moe_layers=(1,), num_experts=4)
    args.update(kw)
    torch.manual_seed(0)
    return LIMoE(**args)


def texts(tok, *strings):
    return tok(list(strings))


def test_shapes_and_single_shared_encoder():
    model = tiny()
    tok = ByteTokenizer(max_len=24)
    img, txt, aux = model(torch.randn(3, 3, 16, 16), texts(tok, "a red square", "a ball", "x"))
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    # One stack of blocks only, and both modalities' losses reach the same encoder weights (experts included).
    assert len(model.encoder.blocks) == 2 and isinstance(model.encoder.blocks[1].mlp, MoeMlp)
    moe = model.encoder.blocks[1].mlp
    shared = [model.encoder.blocks[0].attn.qkv.weight, moe.router.gate.weight, moe.experts.fc1_weight]
    for which in ("image", "text"):
        model.zero_grad()
        img, txt, _ = model(torch.randn(3, 3, 16, 16), texts(tok, "a", "b", "c"))
        (img if which == "image" else txt).square().sum().backward()
        for p in shared:
            assert p.grad is not None and p.grad.abs().sum() > 0, which
        other = model.text_proj if which == "image" else model.image_proj
        assert other.weight.grad is None or other.weight.grad.abs().sum() == 0


def np_entropy(p):
    return -float(sum(x * math.log(x) for x in p if x > 0))


def test_entropy_aux_matches_float64_recomputation():
    model = tiny(global_entropy_min_experts=3.0, image_local_entropy_weight=0.3, image_global_entropy_weight=0.7,
                 text_local_entropy_weight=0.2, text_global_entropy_weight=0.5).double().eval()
    captured = []
    gate = model.encoder.blocks[1].mlp.router.gate
    # Record every input to the gate: the router's own call, then the layer's re-application (same input).
    hook = gate.register_forward_hook(lambda m, i, o: captured.append(i[0].detach().reshape(-1, 32).numpy()))
    tok = ByteTokenizer(max_len=24)
    tokens = texts(tok, "a red square", "two", "a big blue heart")
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _, _, aux = model(images, tokens)
    hook.remove()
    w = gate.weight.detach().numpy()
    tau = math.log(3.0)
    expected = {}
    real = {"image": np.ones(2 * 4, bool), "text": (tokens != 0).numpy().reshape(-1)}
    for modality, h in zip(("image", "text"), (captured[0], captured[2])):
        logits = h @ w.T
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        kept = probs[real[modality]]
        expected[f"{modality}_local"] = np.mean([np_entropy(p) for p in kept])
        expected[f"{modality}_global"] = max(0.0, tau - np_entropy(kept.mean(0)))
    for key, value in expected.items():
        np.testing.assert_allclose(aux["entropy"][key].item(), value, rtol=1e-9, atol=1e-12, err_msg=key)
    weights = {"image_local": 0.3, "image_global": 0.7, "text_local": 0.2, "text_global": 0.5}
    router_aux = sum(m.aux_loss.item() for m in aux["moe"])
    total = router_aux + sum(weights[k] * v for k, v in expected.items())
    np.testing.assert_allclose(aux["aux_loss"].item(), total, rtol=1e-9)
    assert len(aux["moe"]) == 2  # one MoE layer, called once per modality


def test_unthresholded_global_loss_is_minus_entropy():
    model = tiny(global_entropy_min_experts=None).eval()
    _, _, aux = model(torch.randn(2, 3, 16, 16), None)
    assert aux["entropy"]["image_global"].item() < 0
    assert -aux["entropy"]["image_global"].item() <= math.log(4) + 1e-6


def test_text_embedding_ignores_padding_length():
    # Enough capacity that no token is dropped, so extra padding can change nothing (attention masks it, pooling
    # takes the last real token, entropy/statistics skip it).
    model = tiny(capacity_factor=4.0).eval()
    short = ByteTokenizer(max_len=16)(["a red square"])
    long = ByteTokenizer(max_len=24)(["a red square"])
    e1, e2 = model.encode_text(short), model.encode_text(long)
    torch.testing.assert_close(e1, e2, rtol=1e-5, atol=1e-5)
    _, _, a1 = model(None, short)
    _, _, a2 = model(None, long)
    assert torch.equal(a1["expert_counts"]["text"], a2["expert_counts"]["text"])
    torch.testing.assert_close(a1["entropy"]["text_local"], a2["entropy"]["text_local"], rtol=1e-5, atol=1e-6)


def test_expert_counts_count_real_routed_tokens():
    model = tiny(capacity_factor=4.0).eval()
    tokens = ByteTokenizer(max_len=24)(["ab", "a longer caption"])
    _, _, aux = model(None, tokens)
    top = aux["moe"][0].top_expert
    real = tokens != 0
    manual = [int(((top == e) & real).sum()) for e in range(4)]
    assert aux["expert_counts"]["text"].tolist() == [manual]
    assert sum(manual) == int(real.sum())  # capacity 4x: nothing dropped


def test_map_pool_and_eos_pool():
    model = tiny(image_pool="map", text_pool="eos").eval()
    img, txt, _ = model(torch.randn(2, 3, 16, 16), ByteTokenizer(max_len=24)(["a", "bb"]))
    assert img.shape == txt.shape == (2, 16)


def test_registry_and_flops():
    model = create_model("limoe_tiny_test")
    tok = model.build_tokenizer()
    img, txt, aux = model(torch.randn(2, 3, 32, 32), tok(["a large red square in the top left", "a heart"]))
    assert img.shape == txt.shape == (2, 64)
    assert model.global_entropy_threshold == pytest.approx(math.log(2))  # default min experts = E / 2
    # `sparsevision models` passes num_classes; count_flops runs the image path.
    assert count_flops(create_model("limoe_tiny_test", num_classes=1000)) > 0
    with torch.device("meta"):
        big = create_model("limoe_b16")
    assert big.moe_layers == (1, 3, 5, 7, 9, 11) and big.num_experts == 8


def test_errors():
    with pytest.raises(ValueError, match="router"):
        tiny(router="soft")
    with pytest.raises(ValueError, match="image_pool"):
        tiny(image_pool="token")
    with pytest.raises(ValueError, match="moe_layers"):
        tiny(moe_layers=(5,))
    with pytest.raises(ValueError, match="min_experts"):
        tiny(global_entropy_min_experts=9)
    model = tiny()
    with pytest.raises(ValueError, match="max_len"):
        model.encode_text(torch.ones(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model.encode_text(torch.full((1, 4), 300))
    with pytest.raises(ValueError, match="neither"):
        model()
