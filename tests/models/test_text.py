"""Text tower: a float64 numpy reference of the whole forward pass, padding invariance, pooling, causality."""
import math

import numpy as np
import pytest
import torch

from sparsevision.models.text import TextTransformer, create_text_transformer
from sparsevision.text import ByteTokenizer

TINY = dict(vocab_size=259, max_len=16, width=16, depth=2, num_heads=2, mlp_dim=32, out_dim=8)


def _layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def reference_features(model, tokens):
    """Pre-LN transformer written out per text and per head; padding keys get no attention weight."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    width, heads = model.width, model.blocks[0].attn.num_heads
    head_dim = width // heads
    out = []
    for row in tokens.tolist():
        length = len(row)
        x = p["token_embed.weight"][row] + p["pos_embed"][0, :length]
        for b in range(len(model.blocks)):
            pre = f"blocks.{b}."
            h = _layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
            qkv = h @ p[pre + "attn.qkv.weight"].T + p[pre + "attn.qkv.bias"]
            q, k, v = qkv[:, :width], qkv[:, width : 2 * width], qkv[:, 2 * width :]
            attn_out = np.zeros((length, width))
            for head in range(heads):
                sl = slice(head * head_dim, (head + 1) * head_dim)
                for i in range(length):
                    keys = [j for j in range(length) if (row[j] != model.pad_id or j == i) and (not model.causal or j <= i)]
                    scores = np.array([q[i, sl] @ k[j, sl] / math.sqrt(head_dim) for j in keys])
                    weights = np.exp(scores - scores.max())
                    weights /= weights.sum()
                    attn_out[i, sl] = sum(w * v[j, sl] for w, j in zip(weights, keys))
            x = x + attn_out @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
            h = _layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
            h = _gelu(h @ p[pre + "fc1.weight"].T + p[pre + "fc1.bias"])
            x = x + h @ p[pre + "fc2.weight"].T + p[pre + "fc2.bias"]
        out.append(_layer_norm(x, p["norm.weight"], p["norm.bias"]))
    return np.stack(out)


def reference_pool(features, tokens, pool, pad_id=0, eos_id=2):
    rows = []
    for feats, row in zip(features, tokens.tolist()):
        real = [j for j, t in enumerate(row) if t != pad_id]
        if pool == "first":
            rows.append(feats[0])
        elif pool == "last":
            rows.append(feats[real[-1]])
        elif pool == "eos":
            rows.append(feats[row.index(eos_id)] if eos_id in row else feats[real[-1]])
        else:
            rows.append(np.mean([feats[j] for j in real], axis=0))
    return np.stack(rows)


@pytest.fixture
def tokens():
    return ByteTokenizer(max_len=12)(["a cat", "two dogs on a mat", ""])


@pytest.mark.parametrize("causal", [False, True])
def test_features_match_float64_reference(tokens, causal):
    torch.manual_seed(0)
    model = TextTransformer(**TINY, causal=causal).double().eval()
    with torch.no_grad():
        got = model.forward_features(tokens).numpy()
    assert got.shape == (3, 12, TINY["width"])
    # Padding positions are outputs too, but no real token may depend on them: compare every position.
    np.testing.assert_allclose(got, reference_features(model, tokens), atol=1e-10)


@pytest.mark.parametrize("pool", ["last", "first", "gap", "eos"])
def test_pooling_and_head(tokens, pool):
    torch.manual_seed(1)
    model = TextTransformer(**TINY, pool=pool).double().eval()
    with torch.no_grad():
        feats = model.forward_features(tokens)
        pooled = model.forward_head(feats, tokens, pre_logits=True)
        emb = model(tokens)
    expected = reference_pool(feats.numpy(), tokens, pool)
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-12)
    head_w, head_b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    np.testing.assert_allclose(emb.numpy(), expected @ head_w.T + head_b, atol=1e-12)
    assert emb.shape == (3, TINY["out_dim"])


@pytest.mark.parametrize("pool", ["last", "first", "gap", "eos"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_length_does_not_change_embedding(pool, causal):
    torch.manual_seed(2)
    model = TextTransformer(**TINY, pool=pool, causal=causal).eval()
    texts = ["a cat", "hi"]  # both fit in the shorter length, so only the padding differs
    short, long = ByteTokenizer(max_len=TINY["max_len"] - 8)(texts), ByteTokenizer(max_len=TINY["max_len"])(texts)
    assert short.shape[1] < long.shape[1] and (long == 0).sum() > (short == 0).sum()
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(long), atol=1e-5, rtol=1e-5)


def test_causal_mask_hides_later_tokens():
    torch.manual_seed(3)
    tokens = torch.tensor([[1, 10, 11, 12, 2], [1, 10, 11, 99, 2]])
    causal = TextTransformer(**TINY, causal=True).eval()
    bidirectional = TextTransformer(**TINY, causal=False).eval()
    with torch.no_grad():
        feats = causal.forward_features(tokens)
        torch.testing.assert_close(feats[0, :3], feats[1, :3])
        assert not torch.allclose(feats[0, 3:], feats[1, 3:])
        feats = bidirectional.forward_features(tokens)
        assert not torch.allclose(feats[0, :3], feats[1, :3])


def test_all_padding_row_is_finite_and_gradients_reach_every_parameter():
    torch.manual_seed(4)
    model = TextTransformer(**TINY, pool="gap")
    tokens = torch.tensor([[1, 40, 41, 2, 0, 0], [0, 0, 0, 0, 0, 0]])
    emb = model(tokens)
    assert torch.isfinite(emb).all()
    emb[0].sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert unused == []


def test_init_scales_follow_big_vision():
    torch.manual_seed(5)
    model = TextTransformer(vocab_size=500, max_len=64, width=64, depth=1, num_heads=4, mlp_dim=128, out_dim=64)
    assert model.token_embed.weight.std().item() == pytest.approx(64**-0.5, rel=0.05)
    assert model.pos_embed.std().item() == pytest.approx(64**-0.5, rel=0.05)
    # lecun_normal: variance 1/fan_in; xavier_uniform on each 64x64 q/k/v block: bound sqrt(6 / (64 + 64)).
    assert model.head.weight.var().item() == pytest.approx(1 / 64, rel=0.1)
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.abs().max().item() <= math.sqrt(6 / 128) and qkv.abs().max().item() > 0.9 * math.sqrt(6 / 128)


def test_variant_sizes_and_bad_input():
    model = create_text_transformer("test", vocab_size=259, max_len=8, out_dim=4)
    assert model.width == 32 and len(model.blocks) == 2
    with pytest.raises(ValueError, match="unknown text variant"):
        create_text_transformer("XL")
    with pytest.raises(ValueError, match="unknown pool 'mean'"):
        TextTransformer(**TINY, pool="mean")
    with pytest.raises(ValueError, match="not divisible"):
        TextTransformer(**{**TINY, "num_heads": 3})
    model = TextTransformer(**TINY)
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(torch.ones(1, 5))
    with pytest.raises(ValueError, match="vocab_size=259"):
        model(torch.tensor([[1, 300, 2]]))


def test_tower_learns_to_match_fixed_image_embeddings_with_siglip():
    from sparsevision.losses import SigLipLoss

    torch.manual_seed(6)
    texts = ["cat", "dog", "a red car", "tree", "two birds", "sun", "a boat", "moon"]
    tokens = ByteTokenizer(max_len=12)(texts)
    images = torch.randn(len(texts), TINY["out_dim"])
    model, loss_fn = TextTransformer(**TINY, pool="eos"), SigLipLoss()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=3e-3)
    losses = []
    for _ in range(40):
        loss, metrics = loss_fn(images, model(tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["i2t_acc"] == 1.0
