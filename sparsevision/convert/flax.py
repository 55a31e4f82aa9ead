"""Load official JAX/Flax ViT, V-MoE and Soft MoE parameters into sparsevision models.

Input is a flat mapping of '/'-joined Flax paths to arrays (what big_vision and vit_jax `.npz` files hold; see
`load_npz` and `flatten_dict`). Three naming dialects are recognised:

    vit_jax     original ViT checkpoints (pre-Linen names): Transformer/posembed_input/pos_embedding [1, N(+1), D],
                Transformer/encoderblock_i/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}
    big_vision  `big_vision/models/vit.py` (Linen names): top-level pos_embedding [1, h*w, D] added *before* the
                class token is prepended, Transformer/encoderblock_i/{LayerNorm_0, MultiHeadDotProductAttention_0,
                LayerNorm_1, MlpBlock_0}; also Linen-converted vit_jax trees, and `scan=True` trees
                (Transformer/encoderblock/... stacked over depth)
    vmoe        `vmoe/nn/vit_moe.py`: Encoder/posembed_input/pos_embedding, Encoder/encoderblock_i/{LayerNorm_0,
                SelfAttention, LayerNorm_1, Mlp | Moe}, Moe/Router/dense/kernel [D, E] (top-k, expert choice) or
                Moe/Router/{mu [D, E, P], scale} (Soft MoE), Moe/Mlp/Dense_{0,1}/{kernel [E, ...], bias [E, ...]}

Common to all: embedding/{kernel [ph, pw, C, D], bias}, cls [1, 1, D], encoder_norm, pre_logits, head; attention
query/key/value kernels [D, heads, head_dim] (joined here into the fused qkv Linear), out kernel [heads, head_dim, D],
optional query_ln/key_ln (QK-norm); Dense kernels are [in, out] (transposed into nn.Linear's [out, in]);
LayerNorm scale -> weight. Position embeddings on another grid are resampled bilinearly with the class-token row
kept, as big_vision's `resample_posemb` (scipy.ndimage.zoom, order 1: corner-aligned sampling).

Flax's `nn.gelu` defaults to the tanh approximation, which all these checkpoints were trained with; our models
default to exact GELU. Build them with `gelu_approximate="tanh"` (`sparsevision convert` does, and records it in
the file's metadata) or call `use_tanh_gelu_(model)` after an import; otherwise activations differ by up to 5e-4.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .common import LoadReport, apply_state, fit_pos_embed

DIALECTS = ("vit_jax", "big_vision", "vmoe")


@dataclass(frozen=True)
class _Names:
    root: str
    attn: str
    ln1: str
    ln2: str
    mlp: str
    posemb: tuple[str, ...]


_NAMES = {
    "vit_jax": _Names("Transformer", "MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3",
                      ("Transformer/posembed_input/pos_embedding",)),
    "big_vision": _Names("Transformer", "MultiHeadDotProductAttention_0", "LayerNorm_0", "LayerNorm_1", "MlpBlock_0",
                         ("pos_embedding", "Transformer/pos_embedding", "Transformer/posembed_input/pos_embedding")),
    "vmoe": _Names("Encoder", "SelfAttention", "LayerNorm_0", "LayerNorm_1", "Mlp",
                   ("Encoder/posembed_input/pos_embedding",)),
}


# ------------------------------------------------------------------------------------------------ reading trees

def flatten_dict(tree: Mapping, sep: str = "/", prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}; leaves become numpy arrays."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, sep, name))
        else:
            flat[name] = np.asarray(value)
    return flat


def load_npz(path: str | os.PathLike, prefix: str | None = None) -> dict[str, np.ndarray]:
    """Flat '/'-joined parameters of a big_vision / vit_jax `.npz`; `prefix` keeps one sub-tree (e.g. "img" for a
    SigLIP image tower, "params" for a train-state file), with the prefix removed from the names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no parameter file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except Exception as err:  # not a zip of arrays (or object arrays): numpy's message does not name the file
        raise ValueError(f"{path} is not a readable .npz of parameter arrays: {err}") from err
    return select_prefix(flat, prefix) if prefix else flat


def select_prefix(flat: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    head = prefix.strip("/") + "/"
    out = {k[len(head):]: v for k, v in flat.items() if k.startswith(head)}
    if not out:
        tops = sorted({k.split("/", 1)[0] for k in flat})
        raise ValueError(f"no parameter under prefix {prefix!r}; top-level names are {tops}")
    return out


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:  # bfloat16 saved without ml_dtypes
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16).float()
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.astype(np.float32))
    return torch.from_numpy(np.array(array, copy=True))


def _unstack_scan(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision `scan=True` keeps one Transformer/encoderblock with a leading depth axis; split it per block."""
    head = "Transformer/encoderblock/"
    if not any(k.startswith(head) for k in flat):
        return dict(flat)
    out = {k: v for k, v in flat.items() if not k.startswith(head)}
    for key, value in flat.items():
        if key.startswith(head):
            for i in range(value.shape[0]):
                out[f"Transformer/encoderblock_{i}/{key[len(head):]}"] = value[i]
    return out


def detect_dialect(flat: Mapping[str, np.ndarray]) -> str:
    keys = list(flat)
    if any(k.startswith("Encoder/encoderblock_") for k in keys):
        return "vmoe"
    if any(k.startswith("Transformer/encoderblock") for k in keys):
        return "vit_jax" if any("/MultiHeadDotProductAttention_1/" in k for k in keys) else "big_vision"
    tops = sorted({k.split("/", 1)[0] for k in keys})[:12]
    raise ValueError(f"cannot tell the checkpoint's naming: no Encoder/encoderblock_* (vmoe) or "
                     f"Transformer/encoderblock* (vit_jax, big_vision) parameters; top-level names are {tops} "
                     f"(pass prefix= to pick a sub-tree, e.g. 'params' or 'img')")


# ----------------------------------------------------------------------------------------------------- mapping

@dataclass
class _Entry:
    """One target tensor of ours, made from `sources` (flat names) of the given shapes by `build`."""

    target: str
    sources: list[str]
    shapes: list[tuple]
    build: Callable[..., torch.Tensor]


def _t(x):
    return x.t()


def _same(x):
    return x


def _dense(target: str, src: str, linear: nn.Linear) -> list[_Entry]:
    out, inp = linear.weight.shape
    entries = [_Entry(f"{target}.weight", [f"{src}/kernel"], [(inp, out)], _t)]
    if linear.bias is not None:
        entries.append(_Entry(f"{target}.bias", [f"{src}/bias"], [(out,)], _same))
    return entries


def _layernorm(target: str, src: str, norm: nn.LayerNorm) -> list[_Entry]:
    shape = tuple(norm.normalized_shape)
    entries = [_Entry(f"{target}.weight", [f"{src}/scale"], [shape], _same)]
    if norm.bias is not None:
        entries.append(_Entry(f"{target}.bias", [f"{src}/bias"], [shape], _same))
    return entries


def _attention(target: str, src: str, attn: nn.Module) -> list[_Entry]:
    heads, head_dim = attn.num_heads, attn.head_dim
    dim = heads * head_dim
    names = [f"{src}/{p}" for p in ("query", "key", "value")]
    # Our fused qkv rows are ordered (q|k|v, head, head_dim), matching the forward's reshape(.., 3, heads, head_dim).
    entries = [
        _Entry(f"{target}.qkv.weight", [f"{n}/kernel" for n in names], [(dim, heads, head_dim)] * 3,
               lambda q, k, v: torch.cat([w.reshape(w.shape[0], -1).t() for w in (q, k, v)], dim=0)),
        _Entry(f"{target}.proj.weight", [f"{src}/out/kernel"], [(heads, head_dim, dim)],
               lambda w: w.reshape(heads * head_dim, -1).t()),
        _Entry(f"{target}.proj.bias", [f"{src}/out/bias"], [(dim,)], _same),
    ]
    if attn.qkv.bias is not None:
        entries.append(_Entry(f"{target}.qkv.bias", [f"{n}/bias" for n in names], [(heads, head_dim)] * 3,
                              lambda q, k, v: torch.cat([b.reshape(-1) for b in (q, k, v)])))
    if hasattr(attn, "q_norm"):
        entries += _layernorm(f"{target}.q_norm", f"{src}/query_ln", attn.q_norm)
        entries += _layernorm(f"{target}.k_norm", f"{src}/key_ln", attn.k_norm)
    return entries


def _moe(target: str, src: str, moe: nn.Module) -> list[_Entry]:
    experts, router = moe.experts, moe.router
    e, d, h, o = experts.num_experts, experts.dim, experts.hidden_dim, experts.out_dim
    entries = [
        # Stacked expert kernels share the official [E, in, out] layout: no transpose.
        _Entry(f"{target}.experts.fc1_weight", [f"{src}/Mlp/Dense_0/kernel"], [(e, d, h)], _same),
        _Entry(f"{target}.experts.fc1_bias", [f"{src}/Mlp/Dense_0/bias"], [(e, h)], _same),
        _Entry(f"{target}.experts.fc2_weight", [f"{src}/Mlp/Dense_1/kernel"], [(e, h, o)], _same),
        _Entry(f"{target}.experts.fc2_bias", [f"{src}/Mlp/Dense_1/bias"], [(e, o)], _same),
    ]
    if hasattr(router, "gate"):
        entries.append(_Entry(f"{target}.router.gate.weight", [f"{src}/Router/dense/kernel"], [(d, e)], _t))
    else:
        entries.append(_Entry(f"{target}.router.mu", [f"{src}/Router/mu"], [tuple(router.mu.shape)], _same))
        entries.append(_Entry(f"{target}.router.scale", [f"{src}/Router/scale"], [()], _same))
    return entries


def _entries(model: nn.Module, names: _Names) -> list[_Entry]:
    from ..models.vit import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ValueError(f"Flax import supports ViT / V-MoE / Soft MoE models, got {type(model).__name__}")
    conv = model.patch_embed.proj
    d, c, ph, pw = conv.weight.shape
    entries = [
        _Entry("patch_embed.proj.weight", ["embedding/kernel"], [(ph, pw, c, d)], lambda w: w.permute(3, 2, 0, 1)),
        _Entry("patch_embed.proj.bias", ["embedding/bias"], [(d,)], _same),
    ]
    if model.cls_token is not None:
        entries.append(_Entry("cls_token", ["cls"], [(1, 1, d)], _same))
    for i, block in enumerate(model.blocks):
        src = f"{names.root}/encoderblock_{i}"
        entries += _layernorm(f"blocks.{i}.norm1", f"{src}/{names.ln1}", block.norm1)
        entries += _attention(f"blocks.{i}.attn", f"{src}/{names.attn}", block.attn)
        entries += _layernorm(f"blocks.{i}.norm2", f"{src}/{names.ln2}", block.norm2)
        if hasattr(block.mlp, "experts"):
            if names.root != "Encoder":
                raise ValueError(f"block {i} of the model is an MoE layer, but the checkpoint is a dense ViT "
                                 f"({names.root}/...); upcycle it instead (sparsevision.convert.upcycle)")
            entries += _moe(f"blocks.{i}.mlp", f"{src}/Moe", block.mlp)
        else:
            entries += _dense(f"blocks.{i}.mlp.fc1", f"{src}/{names.mlp}/Dense_0", block.mlp.fc1)
            entries += _dense(f"blocks.{i}.mlp.fc2", f"{src}/{names.mlp}/Dense_1", block.mlp.fc2)
    entries += _layernorm("norm", f"{names.root}/encoder_norm", model.norm)
    if isinstance(model.pre_logits, nn.Sequential):
        entries += _dense("pre_logits.0", "pre_logits", model.pre_logits[0])
    if isinstance(model.head, nn.Linear):
        entries += _dense("head", "head", model.head)
    return entries


# -------------------------------------------------------------------------------------------------------- load

def flax_to_state_dict(flat: Mapping[str, np.ndarray], model: nn.Module, dialect: str | None = None,
                       prefix: str | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Our state-dict tensors made from a flat Flax tree, and the report of what fitted."""
    if prefix:
        flat = select_prefix(flat, prefix)
    elif flat and all(k.startswith("params/") for k in flat):
        flat = select_prefix(flat, "params")
    flat = _unstack_scan(flat)
    dialect = dialect or detect_dialect(flat)
    if dialect not in _NAMES:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    names = _NAMES[dialect]
    report = LoadReport(dialect=dialect)
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    for entry in _entries(model, names):
        absent = [s for s in entry.sources if s not in flat]
        if absent:
            report.missing.append(f"{entry.target} <- {', '.join(absent)}")
            used.update(s for s in entry.sources if s in flat)
            continue
        used.update(entry.sources)
        arrays = [_to_tensor(flat[s]) for s in entry.sources]
        bad = [(s, tuple(a.shape), shape) for s, a, shape in zip(entry.sources, arrays, entry.shapes)
               if tuple(a.shape) != tuple(shape)]
        if bad:
            report.mismatched.extend(bad)
            continue
        state[entry.target] = entry.build(*arrays)
    if isinstance(model.pos_embed, nn.Parameter):
        found = [n for n in names.posemb if n in flat]
        if not found:
            report.missing.append(f"pos_embed <- {' or '.join(names.posemb)}")
        else:
            used.add(found[0])
            table = fit_pos_embed(model, _to_tensor(flat[found[0]]), found[0], report)
            if table is not None:
                state["pos_embed"] = table
    covered = {e.target for e in _entries(model, names)} | {"pos_embed"}
    report.missing += [f"{k} <- (no Flax name known)" for k in model.state_dict() if k not in covered]
    report.unexpected = sorted(k for k in flat if k not in used)
    report.loaded = sorted(state)
    return state, report


def load_flax_params(flat: Mapping[str, np.ndarray], model: nn.Module, strict: bool = True,
                     dialect: str | None = None, prefix: str | None = None) -> LoadReport:
    """Copy a flat Flax parameter tree into `model` (see the module docstring for the names understood).

    strict: raise ValueError naming every missing, unexpected and mis-shaped parameter (nothing is copied then);
    otherwise copy what fits and return the report.
    """
    state, report = flax_to_state_dict(flat, model, dialect=dialect, prefix=prefix)
    return apply_state(model, state, report, strict)


def use_tanh_gelu_(model: nn.Module) -> list[str]:
    """Switch every GELU in `model` (dense MLPs and MoE experts) to the tanh approximation that Flax's `nn.gelu`
    uses by default, so an imported checkpoint computes what it was trained with; returns the switched modules.
    Building the model with `gelu_approximate="tanh"` (what `sparsevision convert` does) is the same."""
    switched = []
    for name, module in model.named_modules():
        if isinstance(module, nn.GELU):
            module.approximate = "tanh"
            switched.append(name)
        elif isinstance(getattr(module, "gelu_approximate", None), str):
            module.gelu_approximate = "tanh"
            switched.append(name)
    return switched

