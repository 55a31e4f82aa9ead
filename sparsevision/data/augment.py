"""Optional training augmentation: random crop after padding, and horizontal flip (CIFAR-style, He et al. 2016).

Off unless called. It acts on a batch with an explicit torch.Generator, so an augmented run is as reproducible as
the loader's order. Do not use the flip on tasks whose label is a direction (dsprites_location and
dsprites_orientation: flipping moves x to 1 - x and mirrors the angle), nor on digits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True,
                     pad_value: float = -1.0) -> torch.Tensor:
    """Pad a [B, C, H, W] batch by `padding` with `pad_value` (-1 is black after value_range(-1, 1)), crop back
    to H x W at a random offset per image, and mirror each image left-right with probability 1/2."""
    if images.ndim != 4:
        raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), value=pad_value)
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    rows = offsets[0][:, None] + torch.arange(h)  # [B, H]
    cols = offsets[1][:, None] + torch.arange(w)  # [B, W]
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    batch = torch.arange(b)[:, None, None]
    # Advanced indexing gathers each image's own window: [B, H, W, C] -> [B, C, H, W].
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
