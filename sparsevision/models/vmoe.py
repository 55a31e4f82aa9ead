"""V-MoE (Riquelme et al. 2021, "Scaling Vision with Sparse Mixture of Experts") and Soft MoE ViTs (Puigcerver et
al. 2023, "From Sparse to Soft Mixtures of Experts"), after google-research/vmoe `vmoe/nn/vit_moe.py`.

A `VisionMoE` is a `VisionTransformer` whose MLPs in the blocks named by `moe_layers` are `sparsevision.moe.MoeMlp`
layers; everything else (patch embedding, attention, heads) is the ViT's. The MoE placement rules are the official
ones (`vmoe/configs/vmoe_paper/common.py` and `vmoe/projects/soft_moe/configs/common.py`):

    "every-n"  blocks n-1, 2n-1, ...                (V-MoE "Every n")
    "last-n"   the last n *odd* blocks               (V-MoE "Last n": range(1, depth, 2)[-n:])
    "final-n"  the final n blocks                    (Soft MoE / expert-choice baselines: range(depth)[-n:])
    "all", "none", or an explicit tuple of block indices.

Registered sizes (see `VMOE_SIZES`, `SOFT_MOE_DEFAULTS` and the builders at the end for the sources).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Attention, Mlp
from ..moe import MoeMlp
from .registry import register_model
from .vit import VIT_SIZES, VisionTransformer, VitSize

# V-MoE's own S is wider and shallower than DeiT's S (`get_vmoe_config`: hidden 512, 8 layers, MLP 2048, 8 heads).
VMOE_SIZES: dict[str, VitSize] = {
    "test": VitSize(width=32, depth=4, mlp_dim=64, num_heads=2),
    "S": VitSize(width=512, depth=8, mlp_dim=2048, num_heads=8),
    "B": VIT_SIZES["B"],
    "L": VIT_SIZES["L"],
    "H": VIT_SIZES["H"],
}

_SPEC = re.compile(r"^(every|last|final)-(\d+)$")


def parse_moe_layers(spec: str | Sequence[int], depth: int) -> tuple[int, ...]:
    """Block indices of the MoE layers for a placement spec (see the module docstring)."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(depth))
        if text == "none":
            return ()
        match = _SPEC.match(text)
        if not match:
            raise ValueError(f"moe_layers={spec!r}: expected 'every-N', 'last-N', 'final-N', 'all', 'none' or a "
                             f"tuple of block indices")
        kind, n = match.group(1), int(match.group(2))
        if n < 1:
            raise ValueError(f"moe_layers={spec!r}: N must be >= 1")
        if kind == "every":
            layers = tuple(range(n - 1, depth, n))
        elif kind == "last":
            layers = tuple(range(1, depth, 2))[-n:]
            if n > len(range(1, depth, 2)):
                raise ValueError(f"moe_layers={spec!r}: a depth-{depth} encoder has only "
                                 f"{len(range(1, depth, 2))} odd blocks")
        else:
            if n > depth:
                raise ValueError(f"moe_layers={spec!r}: the encoder has only {depth} blocks")
            layers = tuple(range(depth))[-n:]
        if not layers:
            raise ValueError(f"moe_layers={spec!r} selects no block of a depth-{depth} encoder")
        return layers
    layers = tuple(int(i) for i in spec)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(f"moe_layers={tuple(spec)}: indices must be distinct and in [0, {depth - 1}]")
    return tuple(sorted(layers))


class QkNormAttention(Attention):
    """Attention with a bias-free LayerNorm on each head's queries and keys (ViT-22B, Dehghani et al. 2023).

    This is Flax's `MultiHeadDotProductAttention(normalize_qk=True)` (`query_ln` / `key_ln`, one [head_dim] scale
    shared by the heads, eps 1e-6), which the official Soft MoE configs turn on (`attention_qk_norm=True`).
    """

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__(dim, num_heads, attn_dropout=attn_dropout, proj_dropout=proj_dropout)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=False)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_dropout(self.proj(out))


class VisionMoE(VisionTransformer):
    """ViT with sparse (top-k, expert choice) or soft MoE MLPs in the blocks `moe_layers`.

    MoE arguments (see `sparsevision.moe.MoeMlp`): num_experts, k (experts per token, top-k only), router
    ("top_k" | "expert_choice" | "soft"), capacity_factor / eval_capacity_factor (buffers sized by
    `moe.compute_capacity` with capacity_ceil_or_round and capacity_multiple_of), group_images / group_size (images
    or tokens routed together; neither = each image alone; the registered V-MoE models route 8 images together, as
    the official configs do), batch_priority (BPR), noise_std (None = the
    router's official default), importance / load / gshard loss weights, num_slots (soft, per expert), moe_dropout,
    shared_expert_init (official `split_rngs=False`: every expert starts from the same draw).
    head_bias_init: constant head bias (V-MoE uses -log(num_classes)); qk_norm: LayerNorm on queries and keys.
    """

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
        head_bias_init: float = 0.0,
        qk_norm: bool = False,
        patch_merger_after: int | None = None,
        patch_merger_tokens: int = 8,
        moe_layers: str | Sequence[int] = "every-2",
        num_experts: int = 8,
        k: int = 2,
        router: str = "top_k",
        capacity_factor: float = 1.05,
        eval_capacity_factor: float | None = None,
        group_size: int | None = None,
        group_images: int | None = None,
        batch_priority: bool = False,
        noise_std: float | None = None,
        importance_loss_weight: float = 0.005,
        load_loss_weight: float = 0.005,
        gshard_loss_weight: float = 0.0,
        capacity_ceil_or_round: str = "ceil",
        capacity_multiple_of: int | None = 4,
        num_slots: int | None = None,
        moe_dropout: float = 0.0,
        dispatcher: str = "index",
        shared_expert_init: bool = True,
        gelu_approximate: str = "none",
    ):
        layers = parse_moe_layers(moe_layers, depth)
        # The MoE layers are built before Module.__init__ (which the ViT constructor runs) and handed over by index.
        moe_mlps = {
            i: MoeMlp(width, mlp_dim, num_experts, router=router, k=k, capacity_factor=capacity_factor,
                      eval_capacity_factor=eval_capacity_factor, group_size=group_size, group_images=group_images,
                      batch_priority=batch_priority,
                      noise_std=noise_std, importance_loss_weight=importance_loss_weight,
                      load_loss_weight=load_loss_weight, gshard_loss_weight=gshard_loss_weight,
                      capacity_ceil_or_round=capacity_ceil_or_round, capacity_multiple_of=capacity_multiple_of,
                      num_slots=num_slots, dropout=moe_dropout,
                      dispatcher=dispatcher, shared_expert_init=shared_expert_init,
                      gelu_approximate=gelu_approximate)
            for i in layers
        }
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, width=width,
            depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, pool=pool, pos_embed=pos_embed,
            representation_size=representation_size, dropout=dropout, attn_dropout=attn_dropout,
            head_zero_init=head_zero_init, patch_merger_after=patch_merger_after,
            patch_merger_tokens=patch_merger_tokens, gelu_approximate=gelu_approximate,
            mlp_builder=lambda i: moe_mlps[i] if i in moe_mlps else Mlp(width, mlp_dim, dropout,
                                                                        gelu_approximate=gelu_approximate))
        self.moe_layers = tuple(moe_mlps)
        self.num_experts, self.router_name = num_experts, router
        if qk_norm:
            for block in self.blocks:
                block.attn = QkNormAttention(width, num_heads, attn_dropout=attn_dropout, proj_dropout=dropout)
        if num_classes > 0 and head_bias_init:
            nn.init.constant_(self.head.bias, head_bias_init)

    def moe_mlps(self) -> list[MoeMlp]:
        """The MoE layers, in block order."""
        return [self.blocks[i].mlp for i in self.moe_layers]

    def set_capacity_factor(self, train: float | None = None, eval: float | None = None) -> None:
        """Set the training and/or eval capacity factor of every MoE layer (V-MoE Sec. 4: trading accuracy for
        compute at test time, usually with Batch Priority Routing on, see `set_batch_priority`)."""
        for value, name in ((train, "train"), (eval, "eval")):
            if value is not None and not value > 0:
                raise ValueError(f"{name} capacity factor must be > 0, got {value!r}")
        for mlp in self.moe_mlps():
            mlp.set_capacity_factor(train=train, eval=eval)

    def set_batch_priority(self, enabled: bool) -> None:
        """Turn Batch Priority Routing on/off in every top-k MoE layer (the other routers have no buffer order)."""
        for mlp in self.moe_mlps():
            mlp.set_batch_priority(enabled)


# --------------------------------------------------------------------------------------------------- registrations

def _builder(dims: VitSize, patch: int, doc: str, vmoe_head: bool = False, **defaults):
    def build(**overrides) -> VisionMoE:
        kwargs = dict(patch_size=patch, width=dims.width, depth=dims.depth, mlp_dim=dims.mlp_dim,
                      num_heads=dims.num_heads)
        kwargs.update(defaults)
        if "group_size" in overrides and "group_images" not in overrides:
            kwargs.pop("group_images", None)  # a group given in tokens replaces the default one in images
        kwargs.update(overrides)
        if vmoe_head:
            # get_vmoe_config: token classifier, pre-logits of the model width, head bias -log(num_classes).
            kwargs.setdefault("representation_size", kwargs["width"])
            classes = kwargs.get("num_classes", 1000)
            if classes > 0:
                kwargs.setdefault("head_bias_init", -math.log(classes))
        return VisionMoE(**kwargs)

    build.__doc__ = doc
    return build


# V-MoE (`get_vmoe_config`): K=2, training capacity factor 1.05, importance and load loss weights 0.005, noise std
# 1/E, no BPR in training. S and B follow the released checkpoints (vmoe README: S/32 "E=8, K=2, Last 2", B/16
# "E=8, K=2, Every 2"), so `sparsevision convert` loads them as registered; L/16 and H/14 (never released) follow the
# paper's JFT-300M models, E=32 Every 2 (Table 8: 3.4B and 7.2B parameters). Pass num_experts=32 for the paper's
# B/16 (979M).
# Routing groups: 8 images per group (`group_size = 8 * tokens per image`, the smallest per-device batch the configs
# assume), so an image's routing depends on the others in its group exactly as in the official models; a last batch
# of fewer images is routed as one smaller group (see sparsevision.moe.layer).
_VMOE = dict(vmoe_head=True, pool="token", k=2, router="top_k", capacity_factor=1.05,
             importance_loss_weight=0.005, load_loss_weight=0.005, batch_priority=False)
_VMOE_GROUPS = dict(group_images=8)
for _size, _patch, _where, _experts in [("S", 32, "last-2", 8), ("S", 16, "last-2", 8), ("B", 32, "every-2", 8),
                                        ("B", 16, "every-2", 8), ("L", 16, "every-2", 32), ("H", 14, "every-2", 32)]:
    register_model(f"vmoe_{_size.lower()}{_patch}", _builder(
        VMOE_SIZES[_size], _patch, f"V-MoE-{_size}/{_patch}, E={_experts}, K=2, {_where}, 8-image groups",
        moe_layers=_where, num_experts=_experts, **_VMOE, **_VMOE_GROUPS))
# V-MoE-B/16 with the PatchMerger paper's placement: 8 tokens after the 6th block, so the later MoE layers route
# 8 merged tokens per image instead of 196 (GAP head: the merger mixes every token).
register_model("vmoe_b16_pm", _builder(
    VMOE_SIZES["B"], 16, "V-MoE-B/16 (E=8, K=2, every-2, 8-image groups) with a PatchMerger to 8 tokens after block 6",
    moe_layers="every-2", num_experts=8, **{**_VMOE, "pool": "gap"}, **_VMOE_GROUPS, patch_merger_after=5,
    patch_merger_tokens=8))
register_model("vmoe_tiny_test", _builder(
    VMOE_SIZES["test"], 8, "CPU test size: V-MoE, E=4, K=2, every-2", img_size=32, num_classes=10,
    moe_layers="every-2", num_experts=4, **_VMOE))
register_model("expert_choice_tiny_test", _builder(
    VMOE_SIZES["test"], 8, "CPU test size: expert-choice routing, E=4, final-2", img_size=32, num_classes=10,
    pool="gap", moe_layers="final-2", num_experts=4, router="expert_choice", capacity_factor=1.0))

# Soft MoE (`vmoe/projects/soft_moe/configs`): the ViT sizes with a GAP head and QK-norm, MoE in the final half of
# the blocks (S, B: final 6 of 12; L: final 12 of 24), one slot per expert, 128 experts for S/16, B/16 and L/16.
_SOFT = dict(pool="gap", qk_norm=True, router="soft", num_slots=1, num_experts=128)
for _size, _final in [("S", 6), ("B", 6), ("L", 12)]:
    register_model(f"soft_moe_{_size.lower()}16", _builder(
        VIT_SIZES[_size], 16, f"Soft MoE-{_size}/16: 128 experts x 1 slot in the final {_final} blocks",
        moe_layers=f"final-{_final}", **_SOFT))
register_model("soft_moe_tiny_test", _builder(
    VMOE_SIZES["test"], 8, "CPU test size: Soft MoE, 4 experts x 2 slots, final-2", img_size=32, num_classes=10,
    moe_layers="final-2", **{**_SOFT, "num_experts": 4, "num_slots": 2}))
