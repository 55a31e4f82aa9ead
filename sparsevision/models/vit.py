"""Vision Transformer (Dosovitskiy et al. 2021), shaped after big_vision's `models/vit.py`.

The encoder is a stack of pre-LayerNorm blocks. Each block's MLP is built by `mlp_builder(block_index)`, which is
how V-MoE (`vmoe.py`) swaps sparse MoE layers into chosen blocks: an MLP that returns `(output, metrics)` is treated
as a sparse layer and its metrics are collected, as V-MoE's encoder does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..layers import Attention, Mlp, PatchEmbed, PatchMerger, sincos_2d_pos_embed
from .registry import register_model


@dataclass(frozen=True)
class VitSize:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int


# The sizes of the ViT paper (Table 1) plus DeiT's Ti and S, as in big_vision's `decode_variant`.
VIT_SIZES: dict[str, VitSize] = {
    "test": VitSize(width=32, depth=2, mlp_dim=64, num_heads=2),
    "Ti": VitSize(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": VitSize(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": VitSize(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": VitSize(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": VitSize(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}

POOLS = ("token", "gap")


class EncoderBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp: nn.Module, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads, attn_dropout=attn_dropout, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = mlp

    def forward(self, x: torch.Tensor):
        """Returns (x, metrics); metrics is None for a dense MLP."""
        x = x + self.attn(self.norm1(x))
        out = self.mlp(self.norm2(x))
        metrics = None
        if isinstance(out, tuple):
            out, metrics = out
        return x + out, metrics


def aux_from_metrics(metrics: list, device: torch.device | None = None) -> dict:
    """The auxiliary outputs every model returns with `return_aux=True`.

    V-MoE sums the auxiliary losses of all its MoE layers (official `vit_moe.py`), and the training loop adds that
    sum to the task loss as it is (the per-loss weights live in the routers).
    """
    aux_loss = sum((m.aux_loss for m in metrics), start=torch.zeros((), device=device))
    return {"aux_loss": aux_loss, "moe": metrics}


class VisionTransformer(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        pool: str = "token",
        pos_embed: str = "learn",
        representation_size: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        head_zero_init: bool = True,
        patch_merger_after: int | None = None,
        patch_merger_tokens: int = 8,
        mlp_builder: Callable[[int], nn.Module] | None = None,
        gelu_approximate: str = "none",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        if pos_embed not in ("learn", "sincos2d"):
            raise ValueError(f"unknown pos_embed {pos_embed!r}; expected 'learn' or 'sincos2d'")
        if patch_merger_after is not None and not 0 <= patch_merger_after < depth - 1:
            raise ValueError(f"patch_merger_after={patch_merger_after} must name a block in [0, {depth - 2}]")
        if patch_merger_after is not None and pool == "token":
            raise ValueError("PatchMerger mixes all tokens, class token included; use pool='gap' with it")
        self.num_classes = num_classes
        self.width = width
        self.pool = pool
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        self.num_prefix_tokens = 1 if pool == "token" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pool == "token" else None
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        if pos_embed == "learn":
            # big_vision: normal(stddev=1/sqrt(width)).
            self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * width**-0.5)
        else:
            table = sincos_2d_pos_embed(*self.patch_embed.grid_size, width)
            if self.num_prefix_tokens:
                table = torch.cat([torch.zeros(1, 1, width), table], dim=1)
            self.register_buffer("pos_embed", table, persistent=False)
        self.dropout = nn.Dropout(dropout)
        mlp_builder = mlp_builder or (lambda index: Mlp(width, mlp_dim, dropout, gelu_approximate=gelu_approximate))
        self.blocks = nn.ModuleList(
            EncoderBlock(width, num_heads, mlp_builder(i), dropout, attn_dropout) for i in range(depth)
        )
        self.patch_merger_after = patch_merger_after
        self.patch_merger = PatchMerger(width, patch_merger_tokens) if patch_merger_after is not None else None
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pre_logits = (
            nn.Sequential(nn.Linear(width, representation_size), nn.Tanh()) if representation_size else nn.Identity()
        )
        self.num_features = representation_size or width
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if head_zero_init and num_classes > 0:
            # big_vision zero-initialises the head so training starts from uniform predictions.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor, return_aux: bool = False):
        """Encoded, normalised tokens [B, N, width] (and the per-layer MoE metrics with `return_aux`)."""
        x = self.embed(x)
        metrics = []
        for index, block in enumerate(self.blocks):
            x, block_metrics = block(x)
            if block_metrics is not None:
                metrics.append(block_metrics)
            if index == self.patch_merger_after:
                x = self.patch_merger(x)
        x = self.norm(x)
        return (x, metrics) if return_aux else x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features[:, 0] if self.pool == "token" else features.mean(dim=1)
        pooled = self.pre_logits(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        features, metrics = self.forward_features(x, return_aux=True)
        logits = self.forward_head(features)
        return (logits, aux_from_metrics(metrics, logits.device)) if return_aux else logits


def _vit_builder(size: str, patch: int, **defaults):
    def build(**overrides) -> VisionTransformer:
        dims = VIT_SIZES[size]
        kwargs = dict(patch_size=patch, width=dims.width, depth=dims.depth, mlp_dim=dims.mlp_dim, num_heads=dims.num_heads)
        kwargs.update(defaults)
        kwargs.update(overrides)
        return VisionTransformer(**kwargs)

    build.__doc__ = f"ViT-{size}/{patch}: {VIT_SIZES[size]}"
    return build


for _size, _patch in [("Ti", 16), ("S", 16), ("S", 32), ("B", 16), ("B", 32), ("L", 16), ("L", 32), ("H", 14)]:
    register_model(f"vit_{_size.lower()}{_patch}", _vit_builder(_size, _patch))
# PatchMerger paper placement: B/16 merges its 196 tokens into 8 after the 6th of 12 blocks (GAP head, since the
# merger mixes every token), about halving the FLOPs; see `sparsevision models --flops`.
register_model("vit_b16_pm", _vit_builder("B", 16, pool="gap", patch_merger_after=5, patch_merger_tokens=8))
register_model("vit_tiny_test", _vit_builder("test", 8, img_size=32, num_classes=10, pool="gap"))
