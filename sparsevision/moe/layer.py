"""`MoeMlp`: the sparse MoE replacement of a transformer MLP = router + dispatcher + experts + combine.

As the official `MlpMoeBlock` (`vmoe/nn/vit_moe.py`): tokens [B, N, D] are flattened and cut into groups of
`group_size` consecutive tokens, each routed independently, and the layer returns `(output, metrics)`. Tokens whose
choices were all dropped get a zero output, so in a pre-norm residual block the residual carries them unchanged.

Group size: V-MoE used `group_size = 8 images x tokens per image` per device (so groups span images, and an image's
routing depends on the 7 others in its group); Soft MoE and the expert-choice baselines of the Soft MoE paper route
each image alone. `group_images=8` is V-MoE's setting, for any image size (the tokens per image are read from the
input, so a PatchMerger's 8 tokens make 64-token groups); `group_size` gives the tokens directly; with neither, each
image is one group, which is independent of batch size and device count. When the batch's tokens do not fill a
whole number of groups (a last, smaller eval batch), the tokens left over after the full groups form one smaller
group, routed with its own capacity (the official code would need the batch padded instead).

Dispatchers (sparse routers; Soft MoE always uses its dense einsums): "index" (default) gathers into padded
[E, G*C, D] buffers and runs batched matmuls; "grouped" packs only the kept assignments into one [R, D] buffer
sorted by expert and runs grouped GEMMs (`torch._grouped_mm`), skipping the empty capacity slots (with 196-token
groups the padded buffers hold 6-31% more rows than token choices at capacity factor 1.0, 31% more at 1.25) and
the scatter-adds of the padded backward; "einsum" is the dense one-hot reference. All three compute the same
function (tests: float64 loops, gradcheck). "index" stays the default because "grouped" has not been timed on a
GPU yet: its grouped GEMM is a different kernel (CUTLASS; Hopper / Blackwell in bf16 only, elsewhere "grouped"
runs padded bmm as "index" does) and its bias adds are separate passes, so fewer FLOPs need not mean less time.
`benchmarks/device_check.sh` times both; make "grouped" the default once it is at least as fast at every shape
benchmarked there.
"""
from __future__ import annotations

import torch
from torch import nn

from .capacity import CeilOrRound, compute_capacity
from .dispatch import DISPATCHERS, make_dispatcher
from .experts import Experts
from .metrics import MoeMetrics, merge_group_metrics
from .routers import NoisyTopExpertsPerItemRouter, NoisyTopItemsPerExpertRouter, SoftRouter

ROUTERS = ("top_k", "expert_choice", "soft")


class MoeMlp(nn.Module):
    """Sparse MoE of MLPs.

    router: "top_k" (V-MoE, k choices per token, capacity buffers, optional BPR, aux losses), "expert_choice"
        (each expert picks its top-C tokens) or "soft" (Soft MoE, `num_slots` slots per expert).
    capacity_factor / eval_capacity_factor: capacity in training / eval (eval defaults to the training one); change
        them without retraining with `set_capacity_factor`. Ignored by "soft".
    group_size / group_images: tokens routed together, as a token count or as a number of images (at most one of
        the two; neither = each image alone). See the module docstring for the remainder group.
    num_slots (soft): slots per expert; if None it is derived from `capacity_factor` and `group_size` as the official
        soft router does (`compute_capacity(group_size, E, capacity_factor, "round", multiple_of=1)`).
    noise_std: training-time logit noise. top-k / expert-choice: std noise_std / num_experts (None = 1.0, V-MoE);
        soft: std noise_std (None = 0.0, the official soft router's default).
    dispatcher: "index" (padded buffers, gather / scatter), "grouped" (packed rows, grouped GEMMs) or "einsum"
        (dense reference); all compute the same function (see the module docstring for the default).
    gelu_approximate: "none" (exact erf GELU, as sparsevision.layers.Mlp) or "tanh" (Flax's default, what the
        official checkpoints used).
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int, router: str = "top_k", k: int = 1,
                 capacity_factor: float = 1.0, eval_capacity_factor: float | None = None,
                 group_size: int | None = None, batch_priority: bool = False, noise_std: float | None = None,
                 importance_loss_weight: float = 1.0, load_loss_weight: float = 1.0, gshard_loss_weight: float = 0.0,
                 num_slots: int | None = None, dropout: float = 0.0, dispatcher: str = "index",
                 capacity_ceil_or_round: CeilOrRound = "ceil", capacity_multiple_of: int | None = 4,
                 shared_expert_init: bool = False, gelu_approximate: str = "none", group_images: int | None = None):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got router={router!r}")
        if dispatcher not in DISPATCHERS:
            raise ValueError(f"dispatcher must be one of {DISPATCHERS}, got dispatcher={dispatcher!r}")
        for name, value in (("group_size", group_size), ("group_images", group_images)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {name}={value!r}")
        if group_size is not None and group_images is not None:
            raise ValueError(f"give group_size (tokens) or group_images (images), not both: got "
                             f"group_size={group_size}, group_images={group_images}")
        self.dim, self.num_experts, self.group_size, self.group_images = dim, num_experts, group_size, group_images
        self.router_name, self.dispatcher = router, dispatcher
        if noise_std is None:
            noise_std = 0.0 if router == "soft" else 1.0
        if router == "top_k":
            self.router = NoisyTopExpertsPerItemRouter(
                dim, num_experts, k=k, capacity_factor=capacity_factor, eval_capacity_factor=eval_capacity_factor,
                batch_priority=batch_priority, noise_std=noise_std, importance_loss_weight=importance_loss_weight,
                load_loss_weight=load_loss_weight, gshard_loss_weight=gshard_loss_weight,
                capacity_ceil_or_round=capacity_ceil_or_round, capacity_multiple_of=capacity_multiple_of)
        elif router == "expert_choice":
            self.router = NoisyTopItemsPerExpertRouter(
                dim, num_experts, capacity_factor=capacity_factor, eval_capacity_factor=eval_capacity_factor,
                noise_std=noise_std, capacity_ceil_or_round=capacity_ceil_or_round,
                capacity_multiple_of=capacity_multiple_of)
        else:
            if num_slots is None:
                if group_size is None:
                    raise ValueError("router='soft' needs num_slots, or group_size (tokens) to derive it from "
                                     "capacity_factor")
                num_slots = compute_capacity(group_size, num_experts, capacity_factor, "round", multiple_of=1)
            self.router = SoftRouter(dim, num_experts, num_slots, noise_std=noise_std)
        self.experts = Experts(num_experts, dim, hidden_dim, dropout=dropout, shared_init=shared_expert_init,
                               gelu_approximate=gelu_approximate)

    def set_capacity_factor(self, train: float | None = None, eval: float | None = None) -> None:
        """Change the training and/or eval capacity factor (no effect on soft routing)."""
        if isinstance(self.router, SoftRouter):
            return
        self.router.set_capacity_factor(train=train, eval=eval)

    def set_batch_priority(self, enabled: bool) -> None:
        """Turn Batch Priority Routing on or off (top-k only; expert-choice and soft routing have no buffer order,
        so this is a no-op for them)."""
        if isinstance(self.router, NoisyTopExpertsPerItemRouter):
            self.router.batch_priority = bool(enabled)

    def load_dense_mlp_(self, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> "MoeMlp":
        """Sparse Upcycling: copy a dense MLP (nn.Linear layout) into every expert."""
        self.experts.load_dense_mlp_(fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        return self

    def tokens_per_group(self, tokens_per_image: int) -> int:
        """Tokens routed together for inputs of `tokens_per_image` tokens each."""
        if self.group_images is not None:
            return self.group_images * tokens_per_image
        return self.group_size or tokens_per_image

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoeMetrics]:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MoeMlp input must be [batch, tokens, {self.dim}], got shape {tuple(x.shape)}")
        b, n, d = x.shape
        if b * n == 0:
            raise ValueError(f"MoeMlp got no tokens to route (input shape {tuple(x.shape)})")
        group_size = self.tokens_per_group(n)
        flat = x.reshape(b * n, d)
        full = (b * n // group_size) * group_size
        spans = [(0, full, group_size)] if full else []
        if full < b * n:  # the remainder: one smaller group
            spans.append((full, b * n, b * n - full))
        outputs, parts = [], []
        for start, stop, size in spans:
            y, metrics = self._route_groups(flat[start:stop].view(-1, size, d))
            outputs.append(y.reshape(stop - start, -1))
            parts.append((metrics, (stop - start) // size, stop - start))
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        metrics = merge_group_metrics(parts)
        metrics.top_expert = metrics.top_expert.reshape(b, n)
        return y.reshape(b, n, -1).to(x.dtype), metrics

    def _route_groups(self, groups: torch.Tensor) -> tuple[torch.Tensor, MoeMetrics]:
        """Route, dispatch, run the experts and combine, for tokens already cut into groups [G, S, D]."""
        routing = self.router(groups)
        impl = self.dispatcher
        if impl == "grouped" and not self.experts.supports_packed:
            impl = "index"  # expert-parallel shards exchange padded [E, T, D] buffers
        dispatcher = make_dispatcher(routing, groups.shape[1], impl)
        if dispatcher.packed:
            y = dispatcher.combine(self.experts.forward_packed(dispatcher.dispatch(groups), dispatcher.rows))
        else:
            y = dispatcher.combine(self.experts(dispatcher.dispatch(groups)))
        return y, routing.metrics
