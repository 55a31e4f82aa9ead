"""The transformer MLP block (Linear-GELU-Linear), the dense counterpart of an MoE expert."""
from __future__ import annotations

import torch
from torch import nn


GELU_APPROXIMATIONS = ("none", "tanh")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, out_dim: int | None = None,
                 gelu_approximate: str = "none"):
        super().__init__()
        if gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"gelu_approximate must be one of {GELU_APPROXIMATIONS}, got {gelu_approximate!r}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        # "tanh" is what Flax's nn.gelu computes by default (official ViT / V-MoE checkpoints); "none" is exact erf.
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.dropout = nn.Dropout(dropout)
        # big_vision's MlpBlock: xavier-uniform kernels, tiny normal biases (std 1e-6).
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.act(self.fc1(x)))
        return self.dropout(self.fc2(x))
