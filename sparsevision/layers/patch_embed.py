"""Image to patch tokens, with an input check that names the expected and actual shapes."""
from __future__ import annotations

import math

import torch
from torch import nn


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int | tuple[int, int], patch_size: int | tuple[int, int], in_chans: int, dim: int):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.in_chans = in_chans
        for side, patch in zip(self.img_size, self.patch_size):
            if side % patch != 0:
                raise ValueError(f"image size {self.img_size} is not divisible by patch size {self.patch_size}")
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size)
        # big_vision initialises the embedding like a lecun-normal dense layer over the flattened patch.
        fan_in = in_chans * self.patch_size[0] * self.patch_size[1]
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.proj.bias)

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_chans, *self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            got = f"expected images of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            if x.ndim != 4:
                raise ValueError(f"{got}; pass a batch of images [B, C, H, W] (one image: x[None])")
            # Name the constructor argument that actually differs, with the value the data needs.
            fixes = []
            if x.shape[1] != self.in_chans:
                fixes.append(f"in_chans={x.shape[1]}")
            if tuple(x.shape[2:]) != tuple(self.img_size):
                h, w = x.shape[2:]
                fixes.append(f"img_size={h if h == w else (h, w)}")
            raise ValueError(f"{got}; build the model for the data (e.g. create_model(name, {', '.join(fixes)})) "
                             f"or resize the data to the model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)
