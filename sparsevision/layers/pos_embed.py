"""Position embeddings: fixed 2-D sin-cos (big_vision `posemb_sincos_2d`) and resampling of learned ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_2d_pos_embed(grid_h: int, grid_w: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """[1, grid_h*grid_w, dim] table; a quarter of the channels each for sin(y), cos(y), sin(x), cos(x)."""
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1 if dim > 4 else 1))
    y = y.flatten()[:, None] * omega[None]
    x = x.flatten()[:, None] * omega[None]
    table = torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=1)
    return table[None].float()


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Bilinearly resize a learned [1, prefix + h*w, D] table to a new patch grid (fine-tuning at a new resolution).

    The prefix (class token) rows are kept as they are, as in the ViT paper's 2-D interpolation.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise ValueError(f"cannot resample a non-square position table of {grid.shape[1]} tokens")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix, grid], dim=1)
