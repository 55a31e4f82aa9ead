"""Optional training augmentation: random crop after padding, and horizontal flip (CIFAR-style, He et al. 2016).

Off unless called. It acts on a batch with an explicit torch.Generator, so an augmented run is as reproducible as
the loader's order. Do not use the flip on tasks whose label is a direction (dsprites_location and
dsprites_orientation: flipping moves x to 1 - x and mirrors the angle), nor on digits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, size: tuple[int, int], generator: torch.Generator, flip: bool = False,
                batch_slice: tuple[int, int] | None = None) -> torch.Tensor:
    """A `size` = (height, width) window of a [B, C, H, W] batch at a random offset per image, mirrored left-right
    with probability 1/2 if `flip`.

    batch_slice=(start, total): the images are positions [start, start + B) of a `total`-image batch; the draws
    are made for the whole batch and this slice takes its own, so ranks that each hold a slice augment exactly as
    one process holding the whole batch does. Draw order: row offsets, column offsets, then mirror flags.
    """
    b, _, h, w = images.shape
    crop_h, crop_w = size
    if crop_h > h or crop_w > w:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the images ({h}x{w})")
    start, total = batch_slice if batch_slice is not None else (0, b)
    if start < 0 or start + b > total:
        raise ValueError(f"a slice of {b} images at {start} does not fit in a global batch of {total}")
    top = torch.randint(0, h - crop_h + 1, (total,), generator=generator)[start:start + b]
    left = torch.randint(0, w - crop_w + 1, (total,), generator=generator)[start:start + b]
    rows = top[:, None] + torch.arange(crop_h)  # [B, crop_h]
    cols = left[:, None] + torch.arange(crop_w)  # [B, crop_w]
    if flip:
        mirror = (torch.rand(total, generator=generator) < 0.5)[start:start + b]
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    batch = torch.arange(b)[:, None, None]
    # Advanced indexing gathers each image's own window: [B, H, W, C] -> [B, C, crop_h, crop_w].
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True,
                     pad_value: float = -1.0, batch_slice: tuple[int, int] | None = None) -> torch.Tensor:
    """Pad a [B, C, H, W] batch by `padding` with `pad_value` (-1 is black after value_range(-1, 1)), crop back
    to H x W at a random offset per image, and mirror each image left-right with probability 1/2 (`batch_slice`:
    see `random_crop`)."""
    if images.ndim != 4:
        raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    h, w = images.shape[-2:]
    padded = F.pad(images, (padding, padding, padding, padding), value=pad_value)
    return random_crop(padded, (h, w), generator, flip=flip, batch_slice=batch_slice)
