"""Auxiliary load-balancing losses of V-MoE (Riquelme et al. 2021, Appendix A.2) and GShard (Lepikhin et al. 2020).

All functions take one routing problem per group, `[G, S, E]` (groups, tokens per group, experts), and return one
value per group `[G]`; as in the official code (`vmoe/nn/routing.py`, losses vmapped over groups, then averaged by
the trainer) the routers average them over groups. Standard deviations use ddof=0 (`jnp.std`).
"""
from __future__ import annotations

import torch

from .topk import top_k


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    # Squared coefficient of variation over the expert axis (ddof=0, as jnp.std).
    return (x.std(dim=-1, unbiased=False) / x.mean(dim=-1)) ** 2


def importance_loss(gates: torch.Tensor) -> torch.Tensor:
    """CV^2 of the per-expert importance (sum of softmax gates over tokens). Official: computed on *clean* gates."""
    return _cv_squared(gates.sum(dim=1))


def load_loss(logits: torch.Tensor, noisy_logits: torch.Tensor, noise_std: float, k: int) -> torch.Tensor:
    """CV^2 of the per-expert load, a smooth estimate of how many tokens pick each expert (Shazeer et al. 2017).

    For each token the threshold is its k-th largest *noisy* logit; the probability that expert e lands in the top-k
    if the noise were re-drawn is P(noise > threshold - clean_logit_e) = 1 - Phi((threshold - logit_e) / noise_std).
    As in the official `_load_auxiliary_loss`, the threshold includes the expert itself (no leave-one-out) and keeps
    its gradient through the noisy logits.
    """
    kth = top_k(noisy_logits, k)[1][..., -1:]  # the official index among ties (its gradient goes there)
    threshold = noisy_logits.gather(-1, kth)
    p = 1.0 - torch.special.ndtr((threshold - logits) / noise_std)
    return _cv_squared(p.mean(dim=1))


def gshard_loss(gates: torch.Tensor) -> torch.Tensor:
    """GShard's l_aux (Algorithm 1): E^2 * mean_e(fraction of top-1 choices of e * mean gate of e).

    The E^2 factor is not in the paper but is in lingvo's code, and the official V-MoE code keeps it; only the mean
    gate carries gradient (the top-1 counts are hard).
    """
    num_experts = gates.shape[-1]
    mean_gates = gates.mean(dim=1)
    # A comparison rather than F.one_hot, whose range check reads the indices back on the host (a sync on CPU).
    experts = torch.arange(num_experts, device=gates.device)
    top1 = (gates.argmax(dim=-1, keepdim=True) == experts).to(gates.dtype).mean(dim=1)
    return (top1 * mean_gates).mean(dim=-1) * num_experts**2


def weighted_sum(*pairs: tuple[float, torch.Tensor]) -> torch.Tensor | None:
    """Sum of weight * loss over weights > 0 only (official `_weighted_sum`: a loss that is NaN/ill-defined in some
    setting is switched off entirely by a zero weight, not multiplied by 0). None when no weight is positive."""
    terms = [w * x for w, x in pairs if w > 0]
    return sum(terms[1:], terms[0]) if terms else None
