"""E independent MLP experts (Linear-GELU-Dropout-Linear-Dropout, as ViT's MlpBlock) applied with batched matmuls.

Parameter layout (leading expert axis, `x @ W` orientation, so official Flax kernels load without transposes):
    fc1_weight [E, D, H]   (Flax `Mlp/Dense_0/kernel` [E, D, H])     fc1_bias [E, H]
    fc2_weight [E, H, D']  (Flax `Mlp/Dense_1/kernel` [E, H, D'])    fc2_bias [E, D']
Note this is the transpose of torch `nn.Linear.weight` ([out, in]); `load_dense_mlp_` handles that for upcycling.
Init as big_vision / vit_jax MlpBlock: xavier-uniform kernels (per expert), normal(1e-6) biases. The official V-MoE
configs use `split_rngs=False`, i.e. all experts start identical; `shared_init=True` reproduces that (the default
here draws every expert independently). The activation is exact GELU by default, matching sparsevision.layers.Mlp so
that an upcycled expert computes exactly the dense MLP; `gelu_approximate="tanh"` is Flax's `nn.gelu` default, what
official checkpoints were trained with.

Two entry points: `forward(x [E, T, D])` for padded per-expert buffers (index / einsum / soft dispatch, batched
matmuls) and `forward_packed(x [R, D], rows)` for the packed layout of `grouped.PackedDispatcher` (grouped GEMMs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.mlp import GELU_APPROXIMATIONS
from .grouped import PackedRows, grouped_linear


class Experts(nn.Module):
    supports_packed = True  # forward_packed works (expert-parallel shards exchange padded buffers instead)

    def __init__(self, num_experts: int, dim: int, hidden_dim: int, out_dim: int | None = None,
                 dropout: float = 0.0, shared_init: bool = False, gelu_approximate: str = "none"):
        super().__init__()
        if gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"gelu_approximate must be one of {GELU_APPROXIMATIONS}, got {gelu_approximate!r}")
        out_dim = out_dim or dim
        self.gelu_approximate = gelu_approximate
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
        h = self.dropout(F.gelu(h, approximate=self.gelu_approximate))
        y = torch.baddbmm(self.fc2_bias[:, None, :].to(x.dtype), h, self.fc2_weight.to(x.dtype))
        return self.dropout(y)

    def forward_packed(self, x: torch.Tensor, rows: PackedRows) -> torch.Tensor:
        """[R, D] packed rows (sorted by expert, `rows.offsets` the ends) -> [R, D']; rows past the last offset
        are undefined (see `grouped`)."""
        if x.ndim != 2 or x.shape[-1] != self.dim or rows.num_experts != self.num_experts:
            raise ValueError(f"packed expert input must be [rows, {self.dim}] for {self.num_experts} experts, got "
                             f"{tuple(x.shape)} for {rows.num_experts} experts")
        if torch.is_autocast_enabled(x.device.type):
            # torch._grouped_mm is not on autocast's cast lists: cast to the dtype autocast runs matmuls in.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        dtype = x.dtype
        h = grouped_linear(x, self.fc1_weight.to(dtype), self.fc1_bias.to(dtype), rows)
        h = self.dropout(F.gelu(h, approximate=self.gelu_approximate))
        y = grouped_linear(h, self.fc2_weight.to(dtype), self.fc2_bias.to(dtype), rows)
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
