"""MLP-Mixer (Tolstikhin et al. 2021): token-mixing and channel-mixing MLPs instead of attention."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Mlp, PatchEmbed
from .registry import register_model
from .vit import aux_from_metrics


@dataclass(frozen=True)
class MixerSize:
    width: int
    depth: int
    tokens_mlp_dim: int
    channels_mlp_dim: int


# Table 1 of the MLP-Mixer paper.
MIXER_SIZES: dict[str, MixerSize] = {
    "test": MixerSize(width=32, depth=2, tokens_mlp_dim=16, channels_mlp_dim=64),
    "S": MixerSize(width=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
    "B": MixerSize(width=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "L": MixerSize(width=1024, depth=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
}


class MixerBlock(nn.Module):
    def __init__(self, num_tokens: int, width: int, tokens_mlp_dim: int, channels_mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.token_mixing = Mlp(num_tokens, tokens_mlp_dim, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.channel_mixing = Mlp(width, channels_mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mixing(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mixing(self.norm2(x))


class MlpMixer(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        width: int = 768,
        depth: int = 12,
        tokens_mlp_dim: int = 384,
        channels_mlp_dim: int = 3072,
        dropout: float = 0.0,
        head_zero_init: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        self.num_features = width
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        num_tokens = self.patch_embed.num_patches
        self.blocks = nn.Sequential(
            *(MixerBlock(num_tokens, width, tokens_mlp_dim, channels_mlp_dim, dropout) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        if head_zero_init and num_classes > 0:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor, return_aux: bool = False):
        x = self.norm(self.blocks(self.patch_embed(x)))
        return (x, []) if return_aux else x

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        logits = self.forward_head(self.forward_features(x))
        return (logits, aux_from_metrics([], logits.device)) if return_aux else logits


def _mixer_builder(size: str, patch: int, **defaults):
    def build(**overrides) -> MlpMixer:
        dims = MIXER_SIZES[size]
        kwargs = dict(
            patch_size=patch, width=dims.width, depth=dims.depth,
            tokens_mlp_dim=dims.tokens_mlp_dim, channels_mlp_dim=dims.channels_mlp_dim,
        )
        kwargs.update(defaults)
        kwargs.update(overrides)
        return MlpMixer(**kwargs)

    build.__doc__ = f"Mixer-{size}/{patch}: {MIXER_SIZES[size]}"
    return build


for _size, _patch in [("S", 16), ("S", 32), ("B", 16), ("B", 32), ("L", 16)]:
    register_model(f"mixer_{_size.lower()}{_patch}", _mixer_builder(_size, _patch))
register_model("mixer_tiny_test", _mixer_builder("test", 8, img_size=32, num_classes=10))
