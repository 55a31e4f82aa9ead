"""LIMoE's entropy regularisers of the routing distribution (Mustafa et al. 2022, "Multimodal Contrastive Learning
with LIMoE", Sec. 3.1), computed separately for each modality m from the router's softmax p_m(e | x_i):

    local:   Omega_local  = 1/n * sum_i H(p_m(. | x_i))            minimised: each token routes confidently
    global:  Omega_global = -H(p~_m),  p~_m = 1/n * sum_i p_m(. | x_i)   (i.e. the entropy is maximised: the
             modality as a whole spreads over many experts)

with H(p) = -sum_e p_e log p_e in nats. The paper thresholds the global term so it only acts while the modality's
marginal entropy is below tau, Omega_global = max(0, tau + sum_e p~_e log p~_e) = max(0, tau - H(p~_m)); a threshold
tau = log(S) reads as "use at least S experts (softly)", since log S is the entropy of a uniform spread over S
experts. Together the two terms push towards the mutual-information-like trade-off "confident per token, diverse
per modality" that the paper found necessary to stop one modality collapsing onto a single expert.

Every function takes probabilities [..., E] (all leading dims are tokens) and an optional boolean mask [...] that
drops tokens (e.g. text padding) from both averages.
"""
from __future__ import annotations

import math

import torch

# log(0) is replaced by log(TINY): 0 * log(TINY) = 0 keeps 0 log 0 = 0 and the gradient finite at p = 0.
_TINY = 1e-30


def _flatten(probs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if probs.ndim < 1 or probs.shape[-1] < 1:
        raise ValueError(f"routing probabilities must be [..., num_experts], got shape {tuple(probs.shape)}")
    flat = probs.to(torch.promote_types(probs.dtype, torch.float32)).reshape(-1, probs.shape[-1])
    if mask is not None:
        if tuple(mask.shape) != tuple(probs.shape[:-1]):
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the token dims {tuple(probs.shape[:-1])} "
                             f"of the probabilities {tuple(probs.shape)}")
        flat = flat[mask.reshape(-1).to(torch.bool)]
    if flat.shape[0] == 0:
        raise ValueError("entropy losses need at least one (unmasked) token, got none")
    return flat


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_e p_e log p_e over the last dim (nats), with 0 log 0 = 0."""
    return -(probs * probs.clamp_min(_TINY).log()).sum(-1)


def local_entropy_loss(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (unmasked) tokens of each token's routing entropy; minimise it for confident routing."""
    return entropy(_flatten(probs, mask)).mean()


def marginal_entropy(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """H of the average routing distribution over (unmasked) tokens: how many experts the tokens use together."""
    return entropy(_flatten(probs, mask).mean(0))


def global_entropy_loss(probs: torch.Tensor, mask: torch.Tensor | None = None,
                        threshold: float | None = None) -> torch.Tensor:
    """-H(p~) without a threshold; max(0, threshold - H(p~)) with one (LIMoE's thresholded form)."""
    h = marginal_entropy(probs, mask)
    if threshold is None:
        return -h
    if threshold < 0:
        raise ValueError(f"global entropy threshold must be >= 0 nats, got threshold={threshold}")
    return torch.relu(threshold - h)


def threshold_for_experts(min_experts: float, num_experts: int) -> float:
    """tau = log(min_experts): the marginal entropy of a uniform spread over `min_experts` experts."""
    if not 1 <= min_experts <= num_experts:
        raise ValueError(f"min_experts must lie in [1, num_experts={num_experts}], got min_experts={min_experts}")
    return math.log(min_experts)
