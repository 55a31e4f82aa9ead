"""Load timm Vision Transformer weights (`vit_base_patch16_224` and friends) into `VisionTransformer`.

Our parameter names were chosen to be timm's, so most tensors copy as they are:
    patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head
(the fused qkv rows are ordered q|k|v, head, head_dim in both). The differences handled here:
  - `pre_logits.fc.*` (the representation layer of timm < 0.6) is our `pre_logits.0.*`;
  - a pos_embed without the class-token row (timm `no_embed_class=True`) gets a zero row (the class token then has
    no position embedding, as in timm);
  - a pos_embed on another grid is resampled bilinearly, class-token row kept (sparsevision.convert.common);
  - timm features we do not have (LayerScale `ls1/ls2`, `fc_norm` after pooling, register tokens, MAP pooling,
    `norm_pre`, qk-norm with biases, separate q/v biases) are reported as unexpected parameters, never dropped
    silently.
Both use exact (erf) GELU and LayerNorm eps 1e-6, so an imported ViT computes what timm computes.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping

import torch
from torch import nn

from .common import LoadReport, apply_state, fit_pos_embed

_RENAMES = {"pre_logits.fc.weight": "pre_logits.0.weight", "pre_logits.fc.bias": "pre_logits.0.bias"}


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a mapping, a .safetensors file or a torch .pth/.bin file (unwrapping {'model': ...} or
    {'state_dict': ...} as training scripts save them)."""
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {path}")
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors / pickle raise their own types for a file of another format
            kind = "safetensors" if path.endswith(".safetensors") else "torch (.pth / .bin)"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path} is not a readable {kind} weights file: {first}") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    for wrapper in ("model", "state_dict", "model_ema"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = dict(state[wrapper])
            break
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a state dict of tensors: {bad[:5]} hold {type(state[bad[0]]).__name__}")
    return state


def timm_to_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor],
                                                                                      LoadReport]:
    own = model.state_dict()
    report = LoadReport(dialect="timm")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _RENAMES.get(key, key)
        if name not in own:
            report.unexpected.append(key)
        elif name == "pos_embed":
            table = fit_pos_embed(model, value, key, report)
            if table is not None:
                out[name] = table
        elif tuple(value.shape) != tuple(own[name].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[name].shape)))
        else:
            out[name] = value
    seen = {_RENAMES.get(k, k) for k in state}
    report.missing = [k for k in own if k not in seen]
    report.loaded = sorted(out)
    return out, report


def load_timm_weights(model: nn.Module, state_dict_or_path, strict: bool = True) -> LoadReport:
    """Copy timm ViT weights (a state dict or a file) into our `VisionTransformer`; with `strict`, any missing,
    unexpected or mis-shaped tensor raises a ValueError naming it (nothing copied)."""
    from ..models.vit import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ValueError(f"timm import targets VisionTransformer models, got {type(model).__name__}")
    state, report = timm_to_state_dict(read_state_dict(state_dict_or_path), model)
    return apply_state(model, state, report, strict)


def vit_kwargs_from_timm(state: Mapping[str, torch.Tensor], num_heads: int, global_pool: str = "token",
                         img_size: int | None = None) -> dict:
    """Our VisionTransformer's constructor arguments for a timm ViT state dict (num_heads is not in the tensors)."""
    pool = {"token": "token", "avg": "gap"}.get(global_pool)
    if pool is None:
        raise ValueError(f"timm global_pool={global_pool!r} is not supported (only 'token' and 'avg')")
    if "patch_embed.proj.weight" not in state:
        raise ValueError("not a timm ViT state dict: no patch_embed.proj.weight")
    width, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    kwargs = dict(patch_size=patch, in_chans=in_chans, width=width, depth=depth, num_heads=num_heads,
                  mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0], pool=pool, head_zero_init=False,
                  num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
    if "pre_logits.fc.weight" in state:
        kwargs["representation_size"] = state["pre_logits.fc.weight"].shape[0]
    if img_size is None and "pos_embed" in state:
        tokens = state["pos_embed"].shape[1]
        side = math.isqrt(tokens)
        if side * side != tokens:  # a class-token row first (timm no_embed_class=False)
            side = math.isqrt(tokens - 1)
        img_size = side * patch
    if img_size is not None:
        kwargs["img_size"] = img_size
    return kwargs


def from_timm(name: str, pretrained: bool = True, img_size: int | None = None, **overrides) -> nn.Module:
    """Build the timm model `name` (downloading its weights when `pretrained`, as timm does), then an equivalent
    sparsevision VisionTransformer loaded with its weights. `overrides` go to our constructor (e.g. dropout)."""
    try:
        import timm
    except ImportError as err:
        raise ImportError("from_timm needs timm: pip install 'sparsevision[timm]' (or load a saved state dict "
                          "with load_timm_weights, which does not)") from err
    from ..models.vit import VisionTransformer

    source = timm.create_model(name, pretrained=pretrained)
    state = source.state_dict()
    num_heads = source.blocks[0].attn.num_heads
    if img_size is None:
        img_size = source.patch_embed.img_size[0]
    kwargs = vit_kwargs_from_timm(state, num_heads, getattr(source, "global_pool", "token"), img_size)
    kwargs.update(overrides)
    model = VisionTransformer(**kwargs)
    load_timm_weights(model, state)
    return model.eval()
