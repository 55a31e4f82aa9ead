"""Sparse Upcycling (Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints"): start a V-MoE / Soft MoE from a trained dense ViT.

Every parameter the two models share is copied; in each MoE block the dense MLP is copied into every expert, and the
router keeps its fresh initialisation (the paper's recipe). The upcycled model then computes, per MoE block,
    top-k:          y = (sum of the token's kept top-k gate weights) * MLP(x)   (exactly MLP(x) when k = E)
    expert choice:  y = (sum of the gates of the experts that took the token) * MLP(x)
    soft:           not MLP(x): slots mix tokens before the (identical) experts,
so a top-k model equals the dense one only up to those per-token gate sums until training adapts the router.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from .common import LoadReport, apply_state, fit_pos_embed


def _dense_state(dense: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(dense, nn.Module):
        return dict(dense.state_dict())
    from .timm import read_state_dict

    return read_state_dict(dense)


def upcycle_vit_to_moe(dense: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike, moe_model: nn.Module,
                       strict: bool = True) -> LoadReport:
    """Initialise `moe_model` (a VisionMoE) from a dense ViT (a model, a state dict or a weights file) in place.

    strict: raise ValueError naming every parameter that is missing on either side or has another shape (the
    routers are exempt: they are new by design). Position tables on another grid are resampled.
    """
    moe_blocks = getattr(moe_model, "moe_layers", None)
    if moe_blocks is None:
        raise ValueError(f"upcycling needs a VisionMoE (with moe_layers), got {type(moe_model).__name__}")
    source = _dense_state(dense)
    own = moe_model.state_dict()
    report = LoadReport(dialect="dense ViT")
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    expert_prefixes = tuple(f"blocks.{i}.mlp." for i in moe_blocks)
    for name, target in own.items():
        if name.startswith(expert_prefixes):
            continue  # experts from the dense MLP below; routers stay as initialised
        if name not in source:
            report.missing.append(name)
            continue
        used.add(name)
        value = source[name]
        if name == "pos_embed":
            value = fit_pos_embed(moe_model, value, name, report)
            if value is not None:
                state[name] = value
        elif tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((name, tuple(value.shape), tuple(target.shape)))
        else:
            state[name] = value
    experts = {}
    for i in moe_blocks:
        names = [f"blocks.{i}.mlp.{p}" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]
        absent = [n for n in names if n not in source]
        if absent:
            report.missing += [f"{n} (dense MLP for the experts of block {i})" for n in absent]
            continue
        used.update(names)
        mlp = moe_model.blocks[i].mlp
        e = mlp.experts
        shapes = [(e.hidden_dim, e.dim), (e.hidden_dim,), (e.out_dim, e.hidden_dim), (e.out_dim,)]
        bad = [(n, tuple(source[n].shape), s) for n, s in zip(names, shapes) if tuple(source[n].shape) != s]
        if bad:
            report.mismatched += bad
            continue
        experts[i] = [source[n] for n in names]
    report.unexpected = sorted(k for k in source if k not in used)
    report.loaded = sorted(state) + [f"blocks.{i}.mlp.experts (x{moe_model.blocks[i].mlp.num_experts})"
                                     for i in experts]
    apply_state(moe_model, state, report, strict)
    for i, tensors in experts.items():
        moe_model.blocks[i].mlp.load_dense_mlp_(*tensors)
    return report


def dense_twin(moe_model: nn.Module) -> nn.Module:
    """The dense ViT with the same shape as `moe_model` (to load a dense checkpoint into before upcycling)."""
    from ..models.vit import VisionTransformer

    first = moe_model.blocks[0]
    mlp = first.mlp
    mlp_dim = mlp.experts.hidden_dim if hasattr(mlp, "experts") else mlp.fc1.out_features
    pre = moe_model.pre_logits
    return VisionTransformer(
        img_size=moe_model.patch_embed.img_size, patch_size=moe_model.patch_embed.patch_size,
        in_chans=moe_model.patch_embed.in_chans, num_classes=moe_model.num_classes, width=moe_model.width,
        depth=len(moe_model.blocks), num_heads=first.attn.num_heads, mlp_dim=mlp_dim, pool=moe_model.pool,
        pos_embed="learn" if isinstance(moe_model.pos_embed, nn.Parameter) else "sincos2d",
        representation_size=pre[0].out_features if isinstance(pre, nn.Sequential) else None,
        gelu_approximate=first.mlp.experts.gelu_approximate if hasattr(first.mlp, "experts")
        else first.mlp.act.approximate)
