"""PatchMerger (Renggli et al. 2022, "Learning to Merge Tokens in Vision Transformers").

M learned queries score every token; a softmax over the *tokens* turns each query's scores into mixing weights, so
N tokens become M weighted averages. The paper places one merger in the middle of the encoder (e.g. after block 6 of
12 for B/16, merging to 8 tokens) and normalises the input with a LayerNorm first.
"""
from __future__ import annotations

import torch
from torch import nn


class PatchMerger(nn.Module):
    def __init__(self, dim: int, num_output_tokens: int):
        super().__init__()
        self.num_output_tokens = num_output_tokens
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_output_tokens, dim) * dim**-0.5)

    def merge_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, M, N] weights; each row sums to one over the N input tokens."""
        scores = torch.einsum("md,bnd->bmn", self.queries, self.norm(x))
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bmn,bnd->bmd", self.merge_weights(x), x)
