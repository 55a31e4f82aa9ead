"""Text transformer tower for image-text models (CLIP / LiT / SigLIP / LIMoE), after big_vision's
`models/proj/image_text/text_transformer.py`.

Token embedding + learned position embedding, a stack of pre-LayerNorm blocks and a final LayerNorm, then a pooled
token is projected to `out_dim` by a linear head. Two departures from big_vision, both so that padding is inert:
big_vision attends over every position (its "sticky EOS" padding makes the last token a real EOS), whereas here keys
equal to `pad_id` are masked out of attention, and `pool="last"` takes the last *non-padding* token. The same text
padded to any length therefore yields the same embedding. Padding is expected on the right (tokenizers in
`sparsevision.text` do that), so real tokens keep their positions.

Initialisation follows big_vision/Flax: embeddings normal(1/sqrt(width)), attention and MLP kernels xavier-uniform
(each of q/k/v separately, as Flax's per-projection DenseGeneral), MLP biases normal(1e-6), head lecun-normal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .vit import VIT_SIZES

TEXT_POOLS = ("last", "first", "gap", "eos")


class TextAttention(nn.Module):
    """Multi-head self-attention taking an explicit boolean mask [B, 1, L, L] (True = may attend)."""

    def __init__(self, width: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        for chunk in self.qkv.weight.data.chunk(3, dim=0):
            nn.init.xavier_uniform_(chunk)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class TextBlock(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = TextAttention(width, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask))
        hidden = self.dropout(F.gelu(self.fc1(self.norm2(x))))
        return x + self.dropout(self.fc2(hidden))


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int = 32_000,
        max_len: int = 16,
        width: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        out_dim: int | None = 512,
        pool: str = "last",
        causal: bool = False,
        pad_id: int = 0,
        eos_id: int = 2,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        if pool not in TEXT_POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {TEXT_POOLS}")
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("width", width), ("depth", depth)):
            if value <= 0:
                raise ValueError(f"{name} must be positive; got {value}")
        if not 0 <= pad_id < vocab_size or not 0 <= eos_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} and eos_id={eos_id} must lie in [0, vocab_size={vocab_size})")
        self.vocab_size, self.max_len, self.width = vocab_size, max_len, width
        self.pool, self.causal, self.pad_id, self.eos_id = pool, causal, pad_id, eos_id
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, width) * width**-0.5)
        nn.init.normal_(self.token_embed.weight, std=width**-0.5)  # Flax nn.Embed default: fan_in = width
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TextBlock(width, num_heads, mlp_dim, dropout, attn_dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.num_features = width
        self.out_dim = out_dim or width
        self.head = nn.Linear(width, out_dim) if out_dim else nn.Identity()
        if out_dim:
            # Flax Dense default lecun_normal: truncated normal at +-2 sd, sd rescaled so the variance is 1/fan_in.
            std = math.sqrt(1.0 / width) / 0.87962566103423978
            nn.init.trunc_normal_(self.head.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.head.bias)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            shape = tuple(tokens.shape)
            raise ValueError(f"tokens must be an integer tensor [batch, length]; got {tokens.dtype} {shape}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"token length {tokens.shape[1]} exceeds max_len={self.max_len}")
        # A host-side range check costs a device sync; on accelerators the embedding's own assert reports it.
        if tokens.device.type == "cpu" and tokens.numel():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, vocab_size={self.vocab_size}); got range [{low}, {high}]")

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, L, L], True where query q may attend to key k."""
        length = tokens.shape[1]
        allowed = (tokens != self.pad_id)[:, None, None, :].expand(-1, 1, length, -1)
        # Each position may always attend to itself: real tokens are unaffected (they are not padding), and an
        # all-padding row gets a finite output instead of a softmax over nothing (NaN).
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=tokens.device)
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        return allowed

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encoded, normalised token features [B, L, width]."""
        self._check_tokens(tokens)
        tokens = tokens.long()
        x = self.dropout(self.token_embed(tokens) + self.pos_embed[:, : tokens.shape[1]])
        mask = self.attention_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def pool_features(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One feature vector per text [B, width], chosen by `pool` (padding never contributes)."""
        if self.pool == "first":
            return features[:, 0]
        real = tokens != self.pad_id
        if self.pool == "gap":
            weights = real.to(features.dtype)[..., None]
            return (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last_real = (real.long() * positions).argmax(dim=1)
        index = last_real
        if self.pool == "eos":
            # CLIP pools at the EOS token (there found by argmax, EOS having the largest id); use the first EOS, and
            # the last real token for a text that lost its EOS to truncation by an external tokenizer.
            is_eos = tokens == self.eos_id
            index = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), last_real)
        return features[torch.arange(features.shape[0], device=features.device), index]

    def forward_head(self, features: torch.Tensor, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool_features(features, tokens)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings [B, out_dim] (not L2-normalised: the contrastive losses normalise)."""
        return self.forward_head(self.forward_features(tokens), tokens)


def create_text_transformer(variant: str = "B", **overrides) -> TextTransformer:
    """A text tower sized like the ViT of the same name (big_vision's text model reuses `vit.decode_variant`)."""
    if variant not in VIT_SIZES:
        raise ValueError(f"unknown text variant {variant!r}; expected one of {sorted(VIT_SIZES)}")
    size = VIT_SIZES[variant]
    kwargs = dict(width=size.width, depth=size.depth, mlp_dim=size.mlp_dim, num_heads=size.num_heads)
    return TextTransformer(**{**kwargs, **overrides})
