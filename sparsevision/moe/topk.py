"""`top_k` with the tie order of `jax.lax.top_k`, which every official V-MoE routing decision goes through.

`jax.lax.top_k` returns the largest values first and, among equal values, the lower index first. `torch.topk`
leaves the order of ties unspecified (on CPU it varies with the size of the axis: all-equal logits over 8 experts
give expert 6, over 64 experts expert 32), so a token with tied gates (an all-zero token, duplicated gate columns,
a low-precision gate) would pick other experts, fill other buffer slots and drop other tokens than the official
code. A stable descending sort gives the official order; the routed axes (experts, or a group's tokens for expert
choice) are short, so the full sort costs little next to the expert matmuls.
"""
from __future__ import annotations

import torch


def top_k(x: torch.Tensor, k: int, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries along `dim`, largest first, ties towards the lower index."""
    if not 1 <= k <= x.shape[dim]:
        raise ValueError(f"top_k needs 1 <= k <= {x.shape[dim]} (the size of dim {dim}), got k={k}")
    values, indices = torch.sort(x, dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)
