"""What an MoE layer returns next to its output: the auxiliary losses and routing statistics.

Official V-MoE returns a metrics dict from every MoE block (never globals); the encoder *sums* the blocks'
`auxiliary_loss` (`vmoe/nn/vit_moe.py`) and the trainer adds that sum to the task loss. `total_aux_loss` does that
sum; `average_metrics` averages all fields across layers, for logging.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch


@dataclass
class MoeMetrics:
    """Metrics of one MoE layer call.

    aux_loss: weighted sum of the enabled auxiliary losses (scalar, differentiable; zero for expert-choice / soft).
    importance_loss, load_loss, gshard_loss: unweighted losses, each averaged over routing groups (scalar,
        differentiable). A loss that is not computed (load loss in eval / with noise_std=0, any loss for
        expert-choice / soft routing) is a zero tensor.
    dropped_fraction: top-k: fraction of the G*S*k token-choices that found their expert's buffer full;
        expert-choice: fraction of tokens picked by no expert; soft: 0. Detached.
    expert_load: [E] fraction of the kept (token, expert) assignments that each expert received (sums to 1);
        soft: each expert's share of the combine weights. Detached.
    capacity: buffer size per expert per group (slots per expert for soft); None after averaging.
    top_expert: [B, N] long, per-token expert for routing heat maps: top-k: the first choice, -1 if that choice was
        dropped; expert-choice: the expert with the largest gate among those that picked the token, -1 if none;
        soft: the expert with the largest total combine weight. None after averaging.
    """

    aux_loss: torch.Tensor
    importance_loss: torch.Tensor
    load_loss: torch.Tensor
    gshard_loss: torch.Tensor
    dropped_fraction: torch.Tensor
    expert_load: torch.Tensor | None
    capacity: int | None = None
    top_expert: torch.Tensor | None = None

    def to_dict(self) -> dict[str, float]:
        """Scalar fields as Python floats, for logging."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                out[f.name] = float(v.detach())
            elif isinstance(v, int):
                out[f.name] = float(v)
        return out


_SCALARS = ("aux_loss", "importance_loss", "load_loss", "gshard_loss", "dropped_fraction")


def average_metrics(metrics: Sequence[MoeMetrics]) -> MoeMetrics:
    """Mean of each scalar field (gradients kept) and of `expert_load` across layers (None if the layers have
    different numbers of experts); `capacity` and `top_expert` are per-layer and become None."""
    if not metrics:
        raise ValueError("average_metrics needs at least one MoeMetrics, got an empty sequence")
    avg = {name: torch.stack([getattr(m, name) for m in metrics]).mean() for name in _SCALARS}
    loads = [m.expert_load for m in metrics]
    same = all(x is not None for x in loads) and len({x.shape for x in loads}) == 1
    return MoeMetrics(**avg, expert_load=torch.stack(loads).mean(0) if same else None)


def total_aux_loss(metrics: Sequence[MoeMetrics]) -> torch.Tensor:
    """Sum of the layers' aux losses, as the official V-MoE encoder adds them up."""
    if not metrics:
        raise ValueError("total_aux_loss needs at least one MoeMetrics, got an empty sequence")
    return torch.stack([m.aux_loss for m in metrics]).sum()


def merge_group_metrics(parts: Sequence[tuple[MoeMetrics, int, int]]) -> MoeMetrics:
    """One layer's metrics from routing its tokens in separate calls: `(metrics, num_groups, num_tokens)` per call,
    e.g. the full groups and a smaller remainder group. Losses are averaged over all groups (the routers average
    over groups), `dropped_fraction` over all tokens, `expert_load` weighted by each call's kept assignments (tokens
    x kept fraction, exact for every router); `capacity` is the first call's, `top_expert` the calls' concatenated
    ([G, S] each, flattened to [tokens]). No host sync: the weights are Python numbers or stay on the device."""
    if len(parts) == 1:
        return parts[0][0]
    metrics = [m for m, _, _ in parts]
    groups, tokens = [g for _, g, _ in parts], [t for _, _, t in parts]

    def mean(name: str, weights: list[int]) -> torch.Tensor:
        total = sum(weights)
        return sum(getattr(m, name) * (w / total) for m, w in zip(metrics, weights))

    load = None
    if all(m.expert_load is not None for m in metrics):  # each call's loads sum to 1 (all 0 if it kept nothing)
        kept = torch.stack([t * (1.0 - m.dropped_fraction.detach().double()) for m, t in zip(metrics, tokens)])
        share = kept / kept.sum().clamp_min(1e-12)
        load = sum(m.expert_load * w.to(m.expert_load.dtype) for m, w in zip(metrics, share))
    top = [m.top_expert for m in metrics]
    return MoeMetrics(
        aux_loss=mean("aux_loss", groups), importance_loss=mean("importance_loss", groups),
        load_loss=mean("load_loss", groups), gshard_loss=mean("gshard_loss", groups),
        dropped_fraction=mean("dropped_fraction", tokens), expert_load=load, capacity=parts[0][0].capacity,
        top_expert=torch.cat([t.reshape(-1) for t in top]) if all(t is not None for t in top) else None)
