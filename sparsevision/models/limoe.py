"""LIMoE: one sparse MoE transformer for images and text (Mustafa et al. 2022, "Multimodal Contrastive Learning with
LIMoE: the Language-Image Mixture of Experts").

Each modality has its own input embedding (image: patch embedding + learned position; text: token embedding +
learned position) and its own pooling and projection head (image: global average or MAP pooling; text: the last
real token, which is EOS with the tokenizers here); everything between is ONE encoder whose weights, MoE experts
and routers included, both modalities share. Images and texts pass through it as separate sequences (two calls), so
every routing group holds one modality, as in the paper where routing groups are per modality.

MoE layers use V-MoE top-k routing (`sparsevision.moe.MoeMlp`; the paper's LIMoE is top-1 with Batch Priority
Routing, experts in every other layer). Besides the routers' importance/load losses, each modality m gets the
paper's entropy losses (Sec. 3.1; see `sparsevision.moe.entropy`) on the *clean* router softmax p_m(e | x), the
distribution the importance loss also uses:

    Omega_local(m)  = mean_i H(p_m(. | x_i))                      (weight `{m}_local_entropy_weight`)
    Omega_global(m) = max(0, tau + sum_e p~_m(e) log p~_m(e)),    p~_m = mean_i p_m(. | x_i)
                      tau = log(global_entropy_min_experts); without a threshold (None) it is -H(p~_m)

summed over MoE layers (as V-MoE sums its per-layer aux losses) and added to `aux["aux_loss"]`. Text padding is
excluded from the entropy losses and the expert statistics (it still occupies routing capacity, as it does in any
padded batch). The per-modality weights and tau are configurable; the defaults here are choices, not the paper's
tuned values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Attention, Mlp, PatchEmbed
from ..moe import MoeMetrics, MoeMlp
from ..moe.entropy import global_entropy_loss, local_entropy_loss, threshold_for_experts
from .registry import register_model
from .text import TEXT_POOLS
from .two_tower import ImageTextModel, build_contrastive_loss, lecun_normal_
from .vit import VIT_SIZES

IMAGE_POOLS = ("gap", "map")
MODALITIES = ("image", "text")
LIMOE_ROUTERS = ("top_k", "expert_choice")  # routers with a softmax gate, which the entropy losses need


@dataclass
class LayerRouting:
    """One MoE layer's routing of one modality: its metrics, the clean router softmax [B, N, E] (float32) and the
    mask [B, N] of real tokens (None = all real)."""

    metrics: MoeMetrics
    probs: torch.Tensor
    mask: torch.Tensor | None


class MapHead(nn.Module):
    """Multihead attention pooling (big_vision's `MAPHead`): one learned probe attends over the tokens, then a
    residual MLP on the LayerNormed result."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        nn.init.xavier_uniform_(self.probe.view(1, width))
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)
        x = self.attn(probe, x, x, need_weights=False)[0]
        return (x + self.mlp(self.norm(x)))[:, 0]


class LimoeBlock(nn.Module):
    """Pre-LN transformer block whose MLP is dense or an MoE; attention takes a key padding mask for text."""

    def __init__(self, width: int, num_heads: int, mlp: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> tuple[torch.Tensor, LayerRouting | None]:
        x = x + self.attn(self.norm1(x), key_padding_mask=padding)
        h = self.norm2(x)
        if not isinstance(self.mlp, MoeMlp):
            return x + self.mlp(h), None
        out, metrics = self.mlp(h)
        # The MoE layer does not return its gates, so the (cheap, [D, E]) gate is applied again to get the clean
        # softmax the entropy losses need; gradients reach the same gate weights.
        logits = self.mlp.router.gate(h)
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
        return x + out, LayerRouting(metrics, probs, None if padding is None else ~padding)


class LimoeEncoder(nn.Module):
    def __init__(self, width: int, depth: int, num_heads: int, mlp_dim: int, moe_layers: tuple[int, ...],
                 moe_kwargs: dict, dropout: float = 0.0):
        super().__init__()
        bad = [i for i in moe_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"moe_layers {bad} are outside the encoder's blocks [0, {depth - 1}]")
        blocks = []
        for index in range(depth):
            mlp = MoeMlp(width, mlp_dim, dropout=dropout, **moe_kwargs) if index in moe_layers else \
                Mlp(width, mlp_dim, dropout)
            blocks.append(LimoeBlock(width, num_heads, mlp, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None):
        routing = []
        for block in self.blocks:
            x, layer = block(x, padding)
            if layer is not None:
                routing.append(layer)
        return self.norm(x), routing


def every_other_layer(depth: int) -> tuple[int, ...]:
    """V-MoE's "every 2" placement: MoE in blocks 1, 3, 5, ... (the paper's LIMoE layout)."""
    return tuple(range(1, depth, 2))


def pool_text(features: torch.Tensor, tokens: torch.Tensor, pool: str, pad_id: int, eos_id: int) -> torch.Tensor:
    """One vector per text: first / mean of real tokens / last real token / first EOS (last real if none)."""
    if pool == "first":
        return features[:, 0]
    real = tokens != pad_id
    if pool == "gap":
        w = real.to(features.dtype)[..., None]
        return (features * w).sum(1) / w.sum(1).clamp(min=1.0)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    index = (real.long() * positions).argmax(dim=1)
    if pool == "eos":
        is_eos = tokens == eos_id
        index = torch.where(is_eos.any(dim=1), is_eos.long().argmax(dim=1), index)
    return features[torch.arange(features.shape[0], device=features.device), index]


class LIMoE(ImageTextModel):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        vocab_size: int = 32_000,
        max_len: int = 16,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        embed_dim: int | None = None,
        moe_layers: tuple[int, ...] | None = None,
        num_experts: int = 8,
        router: str = "top_k",
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float | None = None,
        group_size: int | None = None,
        batch_priority: bool = True,
        noise_std: float | None = None,
        importance_loss_weight: float = 0.005,
        load_loss_weight: float = 0.005,
        image_local_entropy_weight: float = 0.01,
        image_global_entropy_weight: float = 0.01,
        text_local_entropy_weight: float = 0.01,
        text_global_entropy_weight: float = 0.01,
        global_entropy_min_experts: float | None = None,
        image_pool: str = "gap",
        text_pool: str = "last",
        pad_id: int = 0,
        eos_id: int = 2,
        dropout: float = 0.0,
        loss: str = "softmax",
        tokenizer: str = "bytes",
    ):
        super().__init__()
        if image_pool not in IMAGE_POOLS:
            raise ValueError(f"unknown image_pool {image_pool!r}; expected one of {IMAGE_POOLS}")
        if text_pool not in TEXT_POOLS:
            raise ValueError(f"unknown text_pool {text_pool!r}; expected one of {TEXT_POOLS}")
        if router not in LIMOE_ROUTERS:
            raise ValueError(f"LIMoE router must be one of {LIMOE_ROUTERS} (the entropy losses need a softmax gate), "
                             f"got router={router!r}")
        if not 0 <= pad_id < vocab_size or not 0 <= eos_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} and eos_id={eos_id} must lie in [0, vocab_size={vocab_size})")
        weights = {"image_local": image_local_entropy_weight, "image_global": image_global_entropy_weight,
                   "text_local": text_local_entropy_weight, "text_global": text_global_entropy_weight}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name}_entropy_weight must be >= 0, got {value}")
        self.entropy_weights = weights
        self.global_entropy_threshold = (None if global_entropy_min_experts is None
                                         else threshold_for_experts(global_entropy_min_experts, num_experts))
        moe_layers = every_other_layer(depth) if moe_layers is None else tuple(int(i) for i in moe_layers)
        self.moe_layers, self.num_experts = moe_layers, num_experts
        self.width, self.embed_dim = width, embed_dim or width
        self.max_len, self.vocab_size, self.pad_id, self.eos_id = max_len, vocab_size, pad_id, eos_id
        self.image_pool, self.text_pool, self.tokenizer_spec = image_pool, text_pool, tokenizer

        # Modality-specific inputs; big_vision inits: position embeddings and token embeddings normal(1/sqrt(D)).
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, width)
        self.image_pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches, width) * width**-0.5)
        self.token_embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embed.weight, std=width**-0.5)
        self.text_pos_embed = nn.Parameter(torch.randn(1, max_len, width) * width**-0.5)
        self.dropout = nn.Dropout(dropout)

        moe_kwargs = dict(num_experts=num_experts, router=router, capacity_factor=capacity_factor,
                          eval_capacity_factor=eval_capacity_factor, group_size=group_size, noise_std=noise_std)
        if router == "top_k":
            moe_kwargs.update(k=k, batch_priority=batch_priority, importance_loss_weight=importance_loss_weight,
                              load_loss_weight=load_loss_weight)
        self.encoder = LimoeEncoder(width, depth, num_heads, mlp_dim, moe_layers, moe_kwargs, dropout)

        # Modality-specific pooling and projection heads.
        self.image_map = MapHead(width, num_heads, mlp_dim) if image_pool == "map" else None
        self.image_proj = nn.Linear(width, self.embed_dim)
        self.text_proj = nn.Linear(width, self.embed_dim)
        for proj in (self.image_proj, self.text_proj):
            lecun_normal_(proj.weight)
            nn.init.zeros_(proj.bias)
        self.contrastive_loss = build_contrastive_loss(loss)

    # ------------------------------------------------------------------------------------------------ encoders

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [batch, length]; got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"token length {tokens.shape[1]} exceeds max_len={self.max_len}")
        if tokens.device.type == "cpu" and tokens.numel():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, vocab_size={self.vocab_size}); got [{low}, {high}]")

    def encode_image(self, images: torch.Tensor, return_aux: bool = False):
        """Image embeddings [B, embed_dim] (and the per-layer `LayerRouting` list with `return_aux`)."""
        x = self.dropout(self.patch_embed(images) + self.image_pos_embed)
        x, routing = self.encoder(x)
        pooled = self.image_map(x) if self.image_map is not None else x.mean(dim=1)
        emb = self.image_proj(pooled)
        return (emb, routing) if return_aux else emb

    def encode_text(self, tokens: torch.Tensor, return_aux: bool = False):
        """Text embeddings [B, embed_dim] from right-padded token ids [B, L <= max_len]."""
        self._check_tokens(tokens)
        tokens = tokens.long()
        padding = tokens == self.pad_id
        # A text of padding only would attend to nothing (NaN); let its first position count as real.
        padding[:, 0] &= ~padding.all(dim=1)
        x = self.dropout(self.token_embed(tokens) + self.text_pos_embed[:, : tokens.shape[1]])
        x, routing = self.encoder(x, padding)
        emb = self.text_proj(pool_text(x, tokens, self.text_pool, self.pad_id, self.eos_id))
        return (emb, routing) if return_aux else emb

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        """(img_emb or None, txt_emb or None, aux).

        aux: "aux_loss" (routers' importance/load losses of both modalities + weighted entropy losses), "moe" (the
        MoeMetrics of every MoE layer, image calls first), "entropy" (unweighted per-modality losses summed over
        layers) and "expert_counts" ({modality: LongTensor [num_moe_layers, E]}, tokens whose top choice each
        expert processed; padding and dropped tokens not counted).
        """
        if images is None and tokens is None:
            raise ValueError("forward needs images, tokens or both; got neither")
        img_emb = txt_emb = None
        routing: dict[str, list[LayerRouting]] = {}
        if images is not None:
            img_emb, routing["image"] = self.encode_image(images, return_aux=True)
        if tokens is not None:
            txt_emb, routing["text"] = self.encode_text(tokens, return_aux=True)
        return img_emb, txt_emb, self.routing_aux(routing)

    # --------------------------------------------------------------------------------------------- aux losses

    def routing_aux(self, routing: dict[str, list[LayerRouting]]) -> dict:
        device = self.image_proj.weight.device
        aux_loss = torch.zeros((), device=device)
        metrics, entropy, counts = [], {}, {}
        for modality, layers in routing.items():
            metrics += [layer.metrics for layer in layers]
            aux_loss = aux_loss + sum((layer.metrics.aux_loss for layer in layers), torch.zeros((), device=device))
            if not layers:
                continue
            local = torch.stack([local_entropy_loss(layer.probs, layer.mask) for layer in layers]).sum()
            glob = torch.stack([global_entropy_loss(layer.probs, layer.mask, self.global_entropy_threshold)
                                for layer in layers]).sum()
            entropy[f"{modality}_local"], entropy[f"{modality}_global"] = local, glob
            aux_loss = aux_loss + self.entropy_weights[f"{modality}_local"] * local \
                + self.entropy_weights[f"{modality}_global"] * glob
            counts[modality] = torch.stack([expert_counts(layer, self.num_experts) for layer in layers])
        return {"aux_loss": aux_loss, "moe": metrics, "entropy": entropy, "expert_counts": counts}


def expert_counts(layer: LayerRouting, num_experts: int) -> torch.Tensor:
    """[E] number of real tokens whose top choice each expert processed (dropped tokens, -1, are not counted)."""
    top = layer.metrics.top_expert
    keep = top >= 0
    if layer.mask is not None:
        keep = keep & layer.mask
    return torch.zeros(num_experts, dtype=torch.long, device=top.device).index_add_(
        0, top[keep], torch.ones_like(top[keep]))


def _limoe_builder(size: str, patch: int, **defaults):
    def build(num_classes: int = 0, img_size: int | None = None, **overrides) -> LIMoE:
        # num_classes: accepted so generic tools (`sparsevision models`) can build it; LIMoE has no classifier.
        del num_classes
        dims = VIT_SIZES[size]
        kwargs = dict(patch_size=patch, width=dims.width, depth=dims.depth, mlp_dim=dims.mlp_dim,
                      num_heads=dims.num_heads)
        kwargs.update(defaults)
        kwargs.update(overrides)
        if img_size is not None:
            kwargs["img_size"] = img_size
        # tau = log(E / 2): each modality must spread over at least half the experts' worth of entropy before the
        # global loss switches off (our default; the paper tunes tau).
        kwargs.setdefault("global_entropy_min_experts", max(1.0, kwargs.get("num_experts", 8) / 2))
        return LIMoE(**kwargs)

    build.__doc__ = f"LIMoE-{size}/{patch}: {VIT_SIZES[size]}"
    return build


# Tiny, byte tokens (vocab 259), 32 px images: tests and CPU runs.
register_model("limoe_tiny_test", _limoe_builder("test", 8, img_size=32, vocab_size=259, max_len=48, num_experts=4,
                                                 moe_layers=(1,), embed_dim=64))
# The paper's LIMoE-B/16: 12 layers, 8 experts in every other layer, top-1 with BPR, 16 text tokens, SentencePiece
# vocabulary of 32k (pass tokenizer="spm:<model>"; the byte default fits in the vocabulary but is not the paper's).
register_model("limoe_b16", _limoe_builder("B", 16, num_experts=8, k=1, max_len=16, vocab_size=32_000,
                                           image_pool="map"))
