"""A model at a new input resolution: same weights, patch grid and position embeddings moved to the new size.

Fine-tuning at a resolution other than pre-training keeps the patch size, so the patch grid changes, and the
learned position table is resampled bilinearly with corners aligned, as the ViT paper's 2-D interpolation and the
official `resample_posemb` (scipy.ndimage.zoom, order 1) do; the class-token row is kept. A fixed sin-cos table is
recomputed for the new grid. An MLP-Mixer's token-mixing MLPs have one weight per token, so it has no resolution
but its own.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import resample_pos_embed, sincos_2d_pos_embed
from .features import model_image_size


def _patch_embed(model: nn.Module) -> nn.Module:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed; cannot change its resolution")
    return patch_embed


def with_resolution(model: nn.Module, img_size: int) -> nn.Module:
    """A copy of `model` that takes `img_size` x `img_size` images (the model itself if that is its size).

    Equivalent to `create_model(name, img_size=img_size, ...)` with the weights loaded and the position table
    resampled (the saved config must then record the new img_size, as `sparsevision transfer` does).
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    if model_image_size(model) == img_size:
        return model
    patch_embed = _patch_embed(model)
    ph, pw = patch_embed.patch_size
    if img_size % ph or img_size % pw:
        raise ValueError(f"resolution {img_size} is not a multiple of the patch size {patch_embed.patch_size}")
    pos_embed = getattr(model, "pos_embed", None)
    if pos_embed is None:
        raise ValueError(f"{type(model).__name__} cannot change resolution ({model_image_size(model)} -> "
                         f"{img_size}): it has no position embedding to resample (an MLP-Mixer's token-mixing "
                         f"weights are tied to its {patch_embed.num_patches} tokens); use resolution='model'")
    model = copy.deepcopy(model)
    patch_embed = model.patch_embed
    grid = (img_size // ph, img_size // pw)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    patch_embed.img_size = (img_size, img_size)
    patch_embed.grid_size = grid
    patch_embed.num_patches = grid[0] * grid[1]
    table = model.pos_embed.detach()
    if isinstance(model.pos_embed, nn.Parameter):
        model.pos_embed = nn.Parameter(resample_pos_embed(table, grid, prefix).contiguous())
    else:  # fixed sin-cos table: the same function of the new grid (the class token gets zeros, as built)
        new = sincos_2d_pos_embed(*grid, table.shape[-1]).to(table)
        if prefix:
            new = torch.cat([table.new_zeros(1, prefix, table.shape[-1]), new], dim=1)
        model.pos_embed = new
    return model
