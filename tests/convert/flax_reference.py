"""Independent numpy reference of the official Flax ViT / V-MoE / Soft MoE forward, on flat '/'-joined parameter
trees written in the official naming (vit_jax, big_vision, vmoe). Used only by the tests.

Written from the JAX sources (vit_jax/models_vit.py, big_vision/models/vit.py, vmoe/nn/vit_moe.py, vmoe/nn/routing.py,
vmoe/projects/soft_moe/router.py, flax MultiHeadDotProductAttention): NHWC conv patches, DenseGeneral q/k/v with
[D, heads, head_dim] kernels, queries scaled by 1/sqrt(head_dim), LayerNorm eps 1e-6, Flax gelu (tanh) by default.
"""
from __future__ import annotations

import math

import numpy as np

NAMES = {
    "vit_jax": dict(root="Transformer", attn="MultiHeadDotProductAttention_1", ln1="LayerNorm_0", ln2="LayerNorm_2",
                    mlp="MlpBlock_3"),
    "big_vision": dict(root="Transformer", attn="MultiHeadDotProductAttention_0", ln1="LayerNorm_0", ln2="LayerNorm_1",
                       mlp="MlpBlock_0"),
    "vmoe": dict(root="Encoder", attn="SelfAttention", ln1="LayerNorm_0", ln2="LayerNorm_1", mlp="Mlp"),
}


def make_tree(dialect, *, width=16, depth=2, heads=2, mlp=24, patch=4, img=8, chans=3, classes=5, pool="token",
              rep=None, moe_layers=(), experts=4, router="top_k", slots=2, qk_norm=False, seed=0):
    rng = np.random.default_rng(seed)
    n = NAMES[dialect]
    d, hd, g = width, width // heads, img // patch

    def r(*shape, s=0.3):
        return rng.normal(size=shape) * s

    t = {"embedding/kernel": r(patch, patch, chans, d), "embedding/bias": r(d)}
    if pool == "token":
        t["cls"] = r(1, 1, d)
    if dialect == "big_vision":
        t["pos_embedding"] = r(1, g * g, d)
    else:
        t[f"{n['root']}/posembed_input/pos_embedding"] = r(1, g * g + (pool == "token"), d)
    for i in range(depth):
        b = f"{n['root']}/encoderblock_{i}"
        for ln in (n["ln1"], n["ln2"]):
            t[f"{b}/{ln}/scale"], t[f"{b}/{ln}/bias"] = 1 + r(d), r(d)
        for p in ("query", "key", "value"):
            t[f"{b}/{n['attn']}/{p}/kernel"], t[f"{b}/{n['attn']}/{p}/bias"] = r(d, heads, hd), r(heads, hd)
        t[f"{b}/{n['attn']}/out/kernel"], t[f"{b}/{n['attn']}/out/bias"] = r(heads, hd, d), r(d)
        if qk_norm:
            t[f"{b}/{n['attn']}/query_ln/scale"], t[f"{b}/{n['attn']}/key_ln/scale"] = 1 + r(hd), 1 + r(hd)
        if i in moe_layers:
            m = f"{b}/Moe"
            t[f"{m}/Mlp/Dense_0/kernel"], t[f"{m}/Mlp/Dense_0/bias"] = r(experts, d, mlp), r(experts, mlp)
            t[f"{m}/Mlp/Dense_1/kernel"], t[f"{m}/Mlp/Dense_1/bias"] = r(experts, mlp, d), r(experts, d)
            if router == "soft":
                t[f"{m}/Router/mu"], t[f"{m}/Router/scale"] = r(d, experts, slots), np.array(1.7)
            else:
                t[f"{m}/Router/dense/kernel"] = r(d, experts, s=1.0)
        else:
            t[f"{b}/{n['mlp']}/Dense_0/kernel"], t[f"{b}/{n['mlp']}/Dense_0/bias"] = r(d, mlp), r(mlp)
            t[f"{b}/{n['mlp']}/Dense_1/kernel"], t[f"{b}/{n['mlp']}/Dense_1/bias"] = r(mlp, d), r(d)
    t[f"{n['root']}/encoder_norm/scale"], t[f"{n['root']}/encoder_norm/bias"] = 1 + r(d), r(d)
    if rep:
        t["pre_logits/kernel"], t["pre_logits/bias"] = r(d, rep), r(rep)
    t["head/kernel"], t["head/bias"] = r(rep or d, classes), r(classes)
    return t


def gelu(x, approximate=True):
    if approximate:  # jax.nn.gelu(approximate=True), Flax's default
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def layernorm(x, scale, bias=None, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale
    return y if bias is None else y + bias


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def attention(t, a, x, heads):
    q, k, v = (np.einsum("nld,dhk->nlhk", x, t[f"{a}/{p}/kernel"]) + t[f"{a}/{p}/bias"]
               for p in ("query", "key", "value"))
    if f"{a}/query_ln/scale" in t:
        q, k = layernorm(q, t[f"{a}/query_ln/scale"]), layernorm(k, t[f"{a}/key_ln/scale"])
    q = q / math.sqrt(q.shape[-1])
    w = softmax(np.einsum("nqhk,nlhk->nhql", q, k))
    y = np.einsum("nhql,nlhk->nqhk", w, v)
    return np.einsum("nqhk,hkd->nqd", y, t[f"{a}/out/kernel"]) + t[f"{a}/out/bias"]


def mlp(t, m, x, approximate):
    h = gelu(x @ t[f"{m}/Dense_0/kernel"] + t[f"{m}/Dense_0/bias"], approximate)
    return h @ t[f"{m}/Dense_1/kernel"] + t[f"{m}/Dense_1/bias"]


def expert(t, m, e, x, approximate):
    h = gelu(x @ t[f"{m}/Mlp/Dense_0/kernel"][e] + t[f"{m}/Mlp/Dense_0/bias"][e], approximate)
    return h @ t[f"{m}/Mlp/Dense_1/kernel"][e] + t[f"{m}/Mlp/Dense_1/bias"][e]


def moe(t, m, x, router, k, approximate):
    """Eval-mode MoE of one image's tokens x [S, D] (one routing group), nothing dropped."""
    if router == "soft":
        def l2(v, axis):
            return v / np.sqrt((v**2).sum(axis=axis, keepdims=True) + 1e-6)

        logits = np.einsum("sd,dep->sep", l2(x, -1) * t[f"{m}/Router/scale"], l2(t[f"{m}/Router/mu"], 0))
        s, e, p = logits.shape
        dispatch = softmax(logits, axis=0)
        combine = softmax(logits.reshape(s, e * p)).reshape(s, e, p)
        slots = np.einsum("sep,sd->epd", dispatch, x)
        outs = np.stack([expert(t, m, i, slots[i], approximate) for i in range(e)])
        return np.einsum("sep,epd->sd", combine, outs)
    gates = softmax(x @ t[f"{m}/Router/dense/kernel"])  # [S, E]
    out = np.zeros_like(x)
    if router == "top_k":  # official: combine with the (not renormalised) top-k softmax weights
        for s in range(x.shape[0]):
            for e in np.argsort(-gates[s], kind="stable")[:k]:
                out[s] += gates[s, e] * expert(t, m, e, x[s:s + 1], approximate)[0]
    else:  # expert choice with capacity = all tokens: every expert takes every token
        for e in range(gates.shape[1]):
            out += gates[:, e:e + 1] * expert(t, m, e, x, approximate)
    return out


def forward(t, dialect, images, *, heads, pool="token", rep=None, router="top_k", k=2, approximate=True):
    """Logits of the official model for NCHW images (our layout; transposed to Flax's NHWC here)."""
    n = NAMES[dialect]
    x = np.transpose(images, (0, 2, 3, 1))
    kernel = t["embedding/kernel"]
    p = kernel.shape[0]
    b, hh, ww, c = x.shape
    patches = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("bijuvc,uvcd->bijd", patches, kernel).reshape(b, -1, kernel.shape[-1]) + t["embedding/bias"]
    if dialect == "big_vision":
        x = x + t["pos_embedding"]
    if pool == "token":
        x = np.concatenate([np.repeat(t["cls"], b, axis=0), x], axis=1)
    if dialect != "big_vision":
        x = x + t[f"{n['root']}/posembed_input/pos_embedding"]
    i = 0
    while f"{n['root']}/encoderblock_{i}/{n['ln1']}/scale" in t:
        blk = f"{n['root']}/encoderblock_{i}"
        y = layernorm(x, t[f"{blk}/{n['ln1']}/scale"], t[f"{blk}/{n['ln1']}/bias"])
        x = x + attention(t, f"{blk}/{n['attn']}", y, heads)
        y = layernorm(x, t[f"{blk}/{n['ln2']}/scale"], t[f"{blk}/{n['ln2']}/bias"])
        if f"{blk}/Moe/Mlp/Dense_0/kernel" in t:
            x = x + np.stack([moe(t, f"{blk}/Moe", y[j], router, k, approximate) for j in range(b)])
        else:
            x = x + mlp(t, f"{blk}/{n['mlp']}", y, approximate)
        i += 1
    x = layernorm(x, t[f"{n['root']}/encoder_norm/scale"], t[f"{n['root']}/encoder_norm/bias"])
    x = x[:, 0] if pool == "token" else x.mean(1)
    if rep:
        x = np.tanh(x @ t["pre_logits/kernel"] + t["pre_logits/bias"])
    return x @ t["head/kernel"] + t["head/bias"]
