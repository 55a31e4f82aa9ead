"""Position embeddings: fixed 2-D sin-cos (big_vision `posemb_sincos_2d`) and resampling of learned ones."""
from __future__ import annotations

import math

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


def resample_grid(grid: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """[h*h, D] square table -> [H*W, D], bilinear with corners aligned, in float64: what the official
    `resample_posemb` / `interpolate_posembed` compute with scipy.ndimage.zoom(order=1), so converted checkpoints
    and fine-tuning at a new resolution see the same table as in big_vision / vmoe."""
    old = math.isqrt(grid.shape[0])
    if old * old != grid.shape[0]:
        raise ValueError(f"cannot resample a non-square position table of {grid.shape[0]} tokens")
    table = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).double()
    table = F.interpolate(table, size=tuple(new_hw), mode="bilinear", align_corners=True)
    return table.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], -1).to(grid.dtype)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resize a learned [1, prefix + h*w, D] table to a new patch grid (fine-tuning at a new resolution).

    The prefix (class token) rows are kept as they are, as in the ViT paper's 2-D interpolation.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    if grid.shape[0] == new_grid[0] * new_grid[1] and math.isqrt(grid.shape[0]) == new_grid[0]:
        return pos_embed
    return torch.cat([prefix, resample_grid(grid, tuple(new_grid))[None]], dim=1)
