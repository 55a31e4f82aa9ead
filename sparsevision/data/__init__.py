"""Image datasets: offline VTAB-like generated tasks, scikit-learn digits, and loaders for user data.

    ds = build_dataset("dsprites_location", split="train", image_size=32, seed=0)
    img, label = ds[0]  # float32 [3, 32, 32] in [-1, 1], int
"""
from .augment import random_crop_flip
from .base import SPLITS, GeneratedDataset, ImageDataset
from .folder import CorruptImageError
from .loader import make_loader, materialize
from .registry import DEFAULT_DATASET, build_dataset, list_datasets

__all__ = [
    "DEFAULT_DATASET", "SPLITS", "CorruptImageError", "GeneratedDataset", "ImageDataset", "build_dataset",
    "list_datasets", "make_loader", "materialize", "random_crop_flip",
]
