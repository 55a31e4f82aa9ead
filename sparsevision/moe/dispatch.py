"""Dispatchers: move tokens into per-expert buffers and bring expert outputs back (official `vmoe/moe.py`).

A dispatcher is built from a `Routing` and knows nothing about how it was decided, so the same experts serve top-k,
expert-choice and soft routing. Layout, as the official `BaseDispatcher`: `dispatch(x [G, S, D]) -> [E, G*C, D]`
(row g*C + c of expert e is slot c of group g), `combine(y [E, G*C, D']) -> [G, S, D']`.

- `DenseDispatcher` is the readable reference, the official `EinsumDispatcher`: dense `[G, S, E, C]` dispatch and
  combine tensors and two einsums. Soft MoE always uses it (its weights are dense by nature).
- `IndexDispatcher` is the fast path for sparse routings, in the spirit of the official `ExpertIndicesDispatcher`:
  one gather into the buffers and one gather (plus a sum over the k choices, or a scatter-add for expert choice)
  back; memory O(G*S*k*D) instead of O(G*S*E*C). Dropped assignments point at a spare all-zero row, so no
  data-dependent shapes (no host sync on GPU).
- `grouped.PackedDispatcher` (`impl="grouped"`) packs only the kept assignments, sorted by expert, into one
  [R, D] buffer for grouped GEMMs (`Experts.forward_packed`), so no FLOPs go to empty capacity slots. Its layout
  differs from the two above (it has `packed = True`); see `sparsevision/moe/grouped.py`.
"""
from __future__ import annotations

import abc

import torch

from .grouped import PackedDispatcher, sum_per_token
from .routers import Routing


class Dispatcher(abc.ABC):
    packed = False

    @abc.abstractmethod
    def dispatch(self, x: torch.Tensor) -> torch.Tensor:
        """[G, S, D] -> [E, G*C, D]."""

    @abc.abstractmethod
    def combine(self, y: torch.Tensor) -> torch.Tensor:
        """[E, G*C, D] -> [G, S, D]."""


class DenseDispatcher(Dispatcher):
    def __init__(self, dispatch_weights: torch.Tensor, combine_weights: torch.Tensor):
        self.dispatch_weights = dispatch_weights  # [G, S, E, C]
        self.combine_weights = combine_weights  # [G, S, E, C]

    @classmethod
    def from_routing(cls, routing: Routing, group_size: int) -> "DenseDispatcher":
        """One-hot tensors from sparse assignments (the official einsum dispatcher's `dispatch_weights` and
        `combine_weights = gates * dispatch_weights`)."""
        if routing.is_dense:
            return cls(routing.dispatch_weights, routing.combine_weights)
        g, _ = routing.expert_index.shape
        e, c, s = routing.num_experts, routing.capacity, group_size
        kept = routing.slot_index >= 0
        group = torch.arange(g, device=kept.device)[:, None].expand_as(kept)
        where = (group[kept], routing.token_index[kept], routing.expert_index[kept], routing.slot_index[kept])
        w = routing.combine_weight
        combine = w.new_zeros(g, s, e, c).index_put(where, w[kept])
        dispatch = w.new_zeros(g, s, e, c).index_put(where, torch.ones_like(w[kept]))
        return cls(dispatch, combine)

    def dispatch(self, x: torch.Tensor) -> torch.Tensor:
        g, _, e, c = self.dispatch_weights.shape
        out = torch.einsum("gsec,gsd->egcd", self.dispatch_weights.to(x.dtype), x)
        return out.reshape(e, g * c, x.shape[-1])

    def combine(self, y: torch.Tensor) -> torch.Tensor:
        g, _, e, c = self.combine_weights.shape
        return torch.einsum("gsec,egcd->gsd", self.combine_weights.to(y.dtype), y.view(e, g, c, y.shape[-1]))


class IndexDispatcher(Dispatcher):
    def __init__(self, routing: Routing, group_size: int):
        if routing.is_dense:
            raise ValueError("IndexDispatcher needs a sparse routing (top-k or expert-choice); soft routing is dense,"
                             " use DenseDispatcher")
        g, a = routing.expert_index.shape
        e, c = routing.num_experts, routing.capacity
        self.num_experts, self.num_groups, self.capacity, self.group_size = e, g, c, group_size
        self.choices_per_token = routing.choices_per_token
        kept = routing.slot_index >= 0
        groups = torch.arange(g, device=kept.device)[:, None]
        spare_row = e * g * c
        # Flat buffer row of each assignment (spare row when dropped) and flat token row it comes from.
        row = routing.expert_index * (g * c) + groups * c + routing.slot_index
        self.buffer_row = torch.where(kept, row, torch.full_like(row, spare_row)).reshape(-1)
        self.token_row = (groups * group_size + routing.token_index).reshape(-1)
        self.weight = torch.where(kept, routing.combine_weight, torch.zeros_like(routing.combine_weight)).reshape(-1)
        # Inverse map: which token row fills each buffer row (the spare token row g*S, all zeros, for empty slots).
        # Only the spare row can receive several writes, and it is discarded.
        spare_token = g * group_size
        source = torch.full((spare_row + 1,), spare_token, dtype=torch.long, device=kept.device)
        self.source_row = source.scatter_(0, self.buffer_row, self.token_row)[:spare_row]

    def dispatch(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        x_flat = torch.cat([x.reshape(-1, d), x.new_zeros(1, d)])
        return x_flat.index_select(0, self.source_row).view(self.num_experts, self.num_groups * self.capacity, d)

    def combine(self, y: torch.Tensor) -> torch.Tensor:
        d = y.shape[-1]
        y_flat = torch.cat([y.reshape(-1, d), y.new_zeros(1, d)])
        picked = y_flat.index_select(0, self.buffer_row) * self.weight.to(y.dtype)[:, None]
        g, s = self.num_groups, self.group_size
        return sum_per_token(picked, g * s, self.choices_per_token, self.token_row).view(g, s, d)


DISPATCHERS = ("index", "einsum", "grouped")


def make_dispatcher(routing: Routing, group_size: int, impl: str = "index") -> Dispatcher | PackedDispatcher:
    """`impl="index"` (padded buffers, gather / scatter), `"einsum"` (dense reference) or `"grouped"` (packed
    rows for grouped GEMMs); soft routing always gets the dense dispatcher."""
    if impl not in DISPATCHERS:
        raise ValueError(f"dispatcher must be one of {DISPATCHERS}, got dispatcher={impl!r}")
    if routing.is_dense or impl == "einsum":
        return DenseDispatcher.from_routing(routing, group_size)
    if impl == "grouped":
        return PackedDispatcher(routing, group_size)
    return IndexDispatcher(routing, group_size)
