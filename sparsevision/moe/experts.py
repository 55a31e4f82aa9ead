"""E independent MLP experts (Linear-GELU-Dropout-Linear-Dropout, as ViT's MlpBlock) applied with batched matmuls.

Parameter layout (leading expert axis, `x @ W` orientation, so official Flax kernels load without transposes):
    fc1_weight [E, D, H]   (Flax `Mlp/Dense_0/kernel` [E, D, H])     fc1_bias [E, H]
    fc2_weight [E, H, D']  (Flax `Mlp/Dense_1/kernel` [E, H, D'])    fc2_bias [E, D']
Note this is the transpose of torch `nn.Linear.weight` ([out, in]); `load_dense_mlp_` handles that for upcycling.
Init as big_vision / vit_jax MlpBlock: xavier-uniform kernels (per expert), normal(1e-6) biases. The official V-MoE
configs use `split_rngs=False`, i.e. all experts start identical; `shared_init=True` reproduces that (the default
here draws every expert independently). The activation is exact GELU, matching sparsevision.layers.Mlp so that an
upcycled expert computes exactly the dense MLP (Flax's `nn.gelu` defaults to the tanh approximation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Experts(nn.Module):
    def __init__(self, num_experts: int, dim: int, hidden_dim: int, out_dim: int | None = None,
                 dropout: float = 0.0, shared_init: bool = False):
        super().__init__()
        out_dim = out_dim or dim
        self.num_experts, self.dim, self.hidden_dim, self.out_dim = num_experts, dim, hidden_dim, out_dim
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, out_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, out_dim))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters(shared_init)

    @torch.no_grad()
    def reset_parameters(self, shared_init: bool = False) -> None:
        n = 1 if shared_init else self.num_experts
        for w in (self.fc1_weight, self.fc2_weight):
            fan_in, fan_out = w.shape[1:]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w.copy_(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound).expand_as(w))
        for b in (self.fc1_bias, self.fc2_bias):
            b.copy_(torch.empty(n, b.shape[1]).normal_(std=1e-6).expand_as(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[E, T, D] buffers -> [E, T, D']: expert e applied to row block e."""
        if x.ndim != 3 or x.shape[0] != self.num_experts or x.shape[-1] != self.dim:
            raise ValueError(f"expert input must be [{self.num_experts}, tokens, {self.dim}], got {tuple(x.shape)}")
        h = torch.baddbmm(self.fc1_bias[:, None, :].to(x.dtype), x, self.fc1_weight.to(x.dtype))
        h = self.dropout(F.gelu(h))
        y = torch.baddbmm(self.fc2_bias[:, None, :].to(x.dtype), h, self.fc2_weight.to(x.dtype))
        return self.dropout(y)

    @torch.no_grad()
    def load_dense_mlp_(self, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
                        fc2_bias: torch.Tensor) -> "Experts":
        """Copy one dense MLP, given as torch `nn.Linear` tensors (weights [out, in]), into every expert.

        This is the expert initialisation of Sparse Upcycling (Komatsuzaki et al. 2023).
        """
        expected = {"fc1_weight": (self.hidden_dim, self.dim), "fc1_bias": (self.hidden_dim,),
                    "fc2_weight": (self.out_dim, self.hidden_dim), "fc2_bias": (self.out_dim,)}
        given = {"fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight, "fc2_bias": fc2_bias}
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"{name} must have shape {shape} (nn.Linear layout), got {tuple(given[name].shape)}")
        self.fc1_weight.copy_(fc1_weight.t().expand_as(self.fc1_weight))
        self.fc1_bias.copy_(fc1_bias.expand_as(self.fc1_bias))
        self.fc2_weight.copy_(fc2_weight.t().expand_as(self.fc2_weight))
        self.fc2_bias.copy_(fc2_bias.expand_as(self.fc2_bias))
        return self
