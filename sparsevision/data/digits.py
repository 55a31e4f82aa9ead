"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1797 images), the library's default task.

It stands in for VTAB's natural digit task `svhn` (and MNIST-like sanity runs): 10 classes, no download (the
data ships inside scikit-learn), and small enough that a tiny ViT on CPU is clearly above chance in a minute.
Ink intensities 0..16 become white-on-black grey, upsampled bilinearly (half-pixel centres, as
`torch.nn.functional.interpolate(align_corners=False)` and big_vision's `resize` do) and replicated to RGB.

Splits are stratified per class from the seed: round(20%) of each class to test, round(10%) to val, the rest to
train: 1259 / 179 / 359 images (train / val / test), disjoint and together all 1797.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .base import ImageDataset, check_image_size, check_seed, check_split, float_to_uint8, stratified_split

VAL_FRACTION, TEST_FRACTION = 0.1, 0.2


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _images_at(image_size: int) -> np.ndarray:
    """All 1797 digits as uint8 [N, S, S, 3], upsampled once per size and shared by every split."""
    images, _ = _load()
    x = torch.from_numpy(images)[:, None]
    if image_size != images.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    grey = float_to_uint8(x[:, 0].numpy())
    return np.repeat(grey[..., None], 3, axis=-1)


def digits_split_indices(seed: int) -> dict[str, np.ndarray]:
    _, labels = _load()
    return stratified_split(labels, seed, VAL_FRACTION, TEST_FRACTION)


class DigitsDataset(ImageDataset):
    def __init__(self, split: str = "train", image_size: int = 32, seed: int = 0):
        self.name = "digits"
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.seed = check_seed(seed)
        self.class_names = [str(d) for d in range(10)]
        self.indices = digits_split_indices(self.seed)[split]
        self._labels = _load()[1][self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, index: int) -> int:
        return int(self._labels[self._check_index(index)])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return _images_at(self.image_size)[self.indices[index]], int(self._labels[index])
