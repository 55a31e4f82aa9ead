"""Routers: turn the tokens of each group into a `Routing` (who goes to which expert slot, with what weight).

Faithful to the official JAX code (google-research/vmoe):
- `NoisyTopExpertsPerItemRouter` (V-MoE, Riquelme et al. 2021; `vmoe/nn/routing.py` + `vmoe/moe.py`): bias-free
  linear gate; in training Gaussian noise of std `noise_std / num_experts` is added to the logits and the *noisy*
  softmax decides the top-k and gives the combine weights (not renormalised over the k). Buffers are filled choice by
  choice (all tokens' 1st choices before any 2nd choice), tokens in order, or with Batch Priority Routing in
  descending order of their largest gate (stable sort: ties keep token order). Choices beyond capacity are dropped.
  Importance loss uses the clean softmax, load loss the clean and noisy logits, GShard loss the noisy softmax; in
  eval (or noise_std=0) there is no load loss and no noise.
- `NoisyTopItemsPerExpertRouter` (expert choice, Zhou et al. 2022): same noisy gate; each expert takes its top-C
  tokens, C = compute_capacity(group_size, E, capacity_factor); no auxiliary loss.
- `SoftRouter` (Soft MoE, Puigcerver et al. 2023; `vmoe/projects/soft_moe/router.py`): logits between l2-normalised
  tokens and l2-normalised slot parameters `mu [D, E, P]` times a learnable scalar `scale`; dispatch = softmax over
  the tokens of a group, combine = softmax over all E*P slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .capacity import CeilOrRound, compute_capacity
from .losses import gshard_loss, importance_loss, load_loss, weighted_sum
from .metrics import MoeMetrics
from .topk import top_k


@dataclass
class Routing:
    """A routing decision for G groups of S tokens.

    Sparse routers (top-k, expert-choice) fill the assignment lists, A entries per group: assignment a sends token
    `token_index[g, a]` to slot `slot_index[g, a]` (-1 = dropped) of expert `expert_index[g, a]` and scales the
    expert output by `combine_weight[g, a]`. When `choices_per_token` is k, the lists are token-major ([S, k]
    flattened, a // k is the token), which lets a dispatcher sum instead of scatter. Soft routing fills the dense
    `[G, S, E, C]` `dispatch_weights` / `combine_weights` instead. `metrics.top_expert` is `[G, S]` here.
    """

    num_experts: int
    capacity: int
    metrics: MoeMetrics
    token_index: torch.Tensor | None = None
    expert_index: torch.Tensor | None = None
    slot_index: torch.Tensor | None = None
    combine_weight: torch.Tensor | None = None
    choices_per_token: int | None = None
    dispatch_weights: torch.Tensor | None = None
    combine_weights: torch.Tensor | None = None

    @property
    def is_dense(self) -> bool:
        return self.dispatch_weights is not None


def _check_groups(x: torch.Tensor, dim: int) -> None:
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"router input must be [num_groups, group_size, {dim}], got shape {tuple(x.shape)}")


def _rank_within_expert(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[G, A] expert ids -> each entry's position among the earlier entries of the same (group, expert).

    A stable sort by (group, expert) keeps the priority order inside each bucket; the position is the distance to
    the bucket start. Same result as the official cumsum over one-hot [A, E], without the [A, E] tensor.
    """
    g, a = expert.shape
    key = (expert + num_experts * torch.arange(g, device=expert.device)[:, None]).reshape(-1)
    order = torch.argsort(key, stable=True)
    # index_add rather than bincount: bincount reads the max on the host (a GPU sync).
    counts = torch.zeros(g * num_experts, dtype=key.dtype, device=key.device).index_add_(0, key, torch.ones_like(key))
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(g * a, device=expert.device) - starts[key[order]]
    return torch.empty_like(key).scatter_(0, order, rank_sorted).view(g, a)


class _NoisyGate(nn.Module):
    """Bias-free linear gate (official `nn.Dense(use_bias=False)`, kernel [D, E] = our weight.T) plus train-time
    logit noise of std noise_std / num_experts, and the train / eval capacity factors."""

    def __init__(self, dim: int, num_experts: int, noise_std: float, capacity_factor: float,
                 eval_capacity_factor: float | None, ceil_or_round: CeilOrRound, multiple_of: int | None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got num_experts={num_experts}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got noise_std={noise_std}")
        self.dim, self.num_experts, self.noise_std = dim, num_experts, noise_std
        self.ceil_or_round, self.multiple_of = ceil_or_round, multiple_of
        self.gate = nn.Linear(dim, num_experts, bias=False)
        # Flax's default lecun_normal: truncated normal, std 1/sqrt(fan_in).
        nn.init.trunc_normal_(self.gate.weight, std=dim**-0.5, a=-2 * dim**-0.5, b=2 * dim**-0.5)
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor

    def set_capacity_factor(self, train: float | None = None, eval: float | None = None) -> None:
        if train is not None:
            self.capacity_factor = train
        if eval is not None:
            self.eval_capacity_factor = eval

    def current_capacity_factor(self) -> float:
        if self.training or self.eval_capacity_factor is None:
            return self.capacity_factor
        return self.eval_capacity_factor

    def noisy(self) -> bool:
        return self.training and self.noise_std > 0

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, noisy) logits, in at least float32; noisy is clean in eval."""
        _check_groups(x, self.dim)
        logits = self.gate(x)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if not self.noisy():
            return logits, logits
        return logits, logits + torch.randn_like(logits) * (self.noise_std / self.num_experts)


def _zero(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(())


class NoisyTopExpertsPerItemRouter(_NoisyGate):
    """Each token picks its top-k experts; per-expert buffers of `capacity` slots per group (V-MoE)."""

    def __init__(self, dim: int, num_experts: int, k: int = 1, capacity_factor: float = 1.0,
                 eval_capacity_factor: float | None = None, batch_priority: bool = False, noise_std: float = 1.0,
                 importance_loss_weight: float = 1.0, load_loss_weight: float = 1.0, gshard_loss_weight: float = 0.0,
                 capacity_ceil_or_round: CeilOrRound = "ceil", capacity_multiple_of: int | None = 4):
        super().__init__(dim, num_experts, noise_std, capacity_factor, eval_capacity_factor,
                         capacity_ceil_or_round, capacity_multiple_of)
        if not num_experts >= k >= 1:
            raise ValueError(f"need num_experts >= k >= 1, got k={k} and num_experts={num_experts}")
        self.k, self.batch_priority = k, batch_priority
        self.importance_loss_weight = importance_loss_weight
        self.load_loss_weight = load_loss_weight
        self.gshard_loss_weight = gshard_loss_weight

    def forward(self, x: torch.Tensor) -> Routing:
        g, s, _ = x.shape
        e, k = self.num_experts, self.k
        capacity = compute_capacity(s * k, e, self.current_capacity_factor(), self.ceil_or_round, self.multiple_of)
        logits, noisy_logits = self.logits(x)
        clean_gates = logits.softmax(-1)
        gates = noisy_logits.softmax(-1) if self.noisy() else clean_gates

        imp = importance_loss(clean_gates).mean()
        gsh = gshard_loss(gates).mean()
        pairs = [(self.gshard_loss_weight, gsh), (self.importance_loss_weight, imp)]
        load = _zero(logits)
        if self.noisy():
            load = load_loss(logits, noisy_logits, self.noise_std / e, k).mean()
            pairs.append((self.load_loss_weight, load))
        aux = weighted_sum(*pairs)

        weight, expert = top_k(gates, k)  # [G, S, K], ties to the lower expert index as jax.lax.top_k
        # Priority list, choice-major: all 1st choices (tokens in priority order), then all 2nd choices, ...
        if self.batch_priority:
            order = torch.argsort(-weight[..., 0], dim=1, stable=True)
            expert_by_priority = expert.gather(1, order[..., None].expand(g, s, k))
        else:  # token order: the priority list is the choices as they are
            expert_by_priority = expert
        rank = _rank_within_expert(expert_by_priority.transpose(1, 2).reshape(g, k * s), e).view(g, k, s)
        if self.batch_priority:  # back from priority order to token order
            rank = torch.empty_like(rank).scatter_(2, order[:, None, :].expand(g, k, s), rank)
        rank = rank.transpose(1, 2)
        slot = torch.where(rank < capacity, rank, torch.full_like(rank, -1))  # [G, S, K]

        kept = slot >= 0
        load_per_expert = torch.zeros(e, device=x.device).index_add_(0, expert.reshape(-1), kept.reshape(-1).float())
        metrics = MoeMetrics(
            aux_loss=aux if aux is not None else _zero(logits), importance_loss=imp, load_loss=load,
            gshard_loss=gsh, dropped_fraction=1.0 - kept.float().mean(),
            expert_load=load_per_expert / load_per_expert.sum().clamp_min(1.0), capacity=capacity,
            top_expert=torch.where(kept[..., 0], expert[..., 0], torch.full_like(expert[..., 0], -1)))
        token = torch.arange(s, device=x.device).repeat_interleave(k).expand(g, s * k)
        return Routing(num_experts=e, capacity=capacity, metrics=metrics, token_index=token,
                       expert_index=expert.reshape(g, s * k), slot_index=slot.reshape(g, s * k),
                       combine_weight=weight.reshape(g, s * k), choices_per_token=k)


class NoisyTopItemsPerExpertRouter(_NoisyGate):
    """Expert-choice routing: each expert takes the C tokens with its largest gates (Zhou et al. 2022)."""

    def __init__(self, dim: int, num_experts: int, capacity_factor: float = 1.0,
                 eval_capacity_factor: float | None = None, noise_std: float = 1.0,
                 capacity_ceil_or_round: CeilOrRound = "ceil", capacity_multiple_of: int | None = 4):
        super().__init__(dim, num_experts, noise_std, capacity_factor, eval_capacity_factor,
                         capacity_ceil_or_round, capacity_multiple_of)

    def forward(self, x: torch.Tensor) -> Routing:
        g, s, _ = x.shape
        e = self.num_experts
        capacity = compute_capacity(s, e, self.current_capacity_factor(), self.ceil_or_round, self.multiple_of)
        if capacity > s:
            raise ValueError(f"expert-choice capacity={capacity} exceeds group_size={s}: each expert picks "
                             f"`capacity` distinct tokens; lower capacity_factor or capacity_multiple_of")
        _, noisy_logits = self.logits(x)
        gates = noisy_logits.softmax(-1)
        # [G, E, C]; equal gates keep the lower token index first, as jax.lax.top_k
        weight, token = top_k(gates.transpose(1, 2), capacity)

        picked = torch.zeros(g, e, s, dtype=torch.bool, device=x.device).scatter_(2, token, True)
        best = gates.masked_fill(~picked.transpose(1, 2), -1.0).argmax(-1)
        any_picked = picked.any(1)
        zero = _zero(gates)
        metrics = MoeMetrics(
            aux_loss=zero, importance_loss=zero, load_loss=zero, gshard_loss=zero,
            dropped_fraction=1.0 - any_picked.float().mean(),
            expert_load=torch.full((e,), 1.0 / e, device=x.device), capacity=capacity,
            top_expert=torch.where(any_picked, best, torch.full_like(best, -1)))
        expert = torch.arange(e, device=x.device).repeat_interleave(capacity).expand(g, e * capacity)
        slot = torch.arange(capacity, device=x.device).repeat(e).expand(g, e * capacity)
        return Routing(num_experts=e, capacity=capacity, metrics=metrics, token_index=token.reshape(g, -1),
                       expert_index=expert, slot_index=slot, combine_weight=weight.reshape(g, -1))


ExpertChoiceRouter = NoisyTopItemsPerExpertRouter


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    # Official soft-router `normalize`: eps inside the rsqrt.
    return x * torch.rsqrt(x.square().sum(dim=dim, keepdim=True) + eps)


class SoftRouter(nn.Module):
    """Soft MoE: every slot is a convex combination of a group's tokens; every token a convex combination of slots.

    Parameters follow the official layout: `mu [D, E, P]` (slot embeddings) and the scalar `scale` (init 1).
    """

    def __init__(self, dim: int, num_experts: int, num_slots: int, noise_std: float = 0.0):
        super().__init__()
        if num_experts < 1 or num_slots < 1:
            raise ValueError(f"need num_experts >= 1 and num_slots >= 1, got {num_experts=} and {num_slots=}")
        self.dim, self.num_experts, self.num_slots, self.noise_std = dim, num_experts, num_slots, noise_std
        # Only mu's direction matters (it is l2-normalised), so any isotropic init does; lecun-like scale.
        self.mu = nn.Parameter(torch.randn(dim, num_experts, num_slots) / math.sqrt(dim))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> Routing:
        _check_groups(x, self.dim)
        g, s, _ = x.shape
        e, p = self.num_experts, self.num_slots
        x = l2_normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)
        mu = l2_normalize(self.mu.to(x.dtype), dim=0)
        # Official scales whichever of the two is smaller (same product, fewer flops).
        if x.numel() < mu.numel():
            x = x * self.scale
        else:
            mu = mu * self.scale
        logits = torch.einsum("gsd,dep->gsep", x, mu)
        if self.training and self.noise_std > 0:
            logits = logits + self.noise_std * torch.randn_like(logits)
        dispatch = logits.softmax(dim=1)
        combine = logits.reshape(g, s, e * p).softmax(dim=-1).view(g, s, e, p)
        per_expert = combine.detach().sum(-1)  # [G, S, E]
        zero = _zero(logits)
        metrics = MoeMetrics(aux_loss=zero, importance_loss=zero, load_loss=zero, gshard_loss=zero,
                             dropped_fraction=zero, expert_load=per_expert.mean((0, 1)), capacity=p,
                             top_expert=per_expert.argmax(-1))
        return Routing(num_experts=e, capacity=p, metrics=metrics, dispatch_weights=dispatch,
                       combine_weights=combine)
