"""Image datasets: offline VTAB-like generated tasks, scikit-learn digits, and loaders for user data.

    ds = build_dataset("dsprites_location", split="train", image_size=32, seed=0)
    img, label = ds[0]  # float32 [3, 32, 32] in [-1, 1] (big_vision value_range(-1, 1)), int

Built-in datasets (no files, no network; generated ones are a pure function of (seed, split, index)):

    name                  classes  train / val / test        mimics (VTAB)
    digits (default)      10       1259 / 179 / 359          svhn-like digits; sklearn's 1797, stratified by seed
    dsprites_location     16       10000 / 1000 / 2000 (*)   dsprites/label_x_position
    dsprites_orientation  16       10000 / 1000 / 2000 (*)   dsprites/label_orientation
    dsprites_shape        3        10000 / 1000 / 2000 (*)   (easy sanity task on the same images)
    counting              8        10000 / 1000 / 2000 (*)   clevr count_all (3..10 objects)
    textures              9        10000 / 1000 / 2000 (*)   dtd

(*) generated: any size via num_examples=; each split is its own independent stream, so val never repeats train.
Captioned images for contrastive training: `build_caption_dataset` (captions from the generated factors, e.g. "a
large red square in the top left"), `ImageTextFolder` / `ImageTextTable` / `WebDatasetPairs` for a user's pairs.
User data: `folder:<root>`, `hf:<name>` (pip install sparsevision[hf]), `tv:<Name>` (pip install sparsevision[vision]).
"""
from .augment import random_crop_flip
from .base import SPLITS, GeneratedDataset, ImageDataset
from .captions import (CaptionDataset, ImageTextFolder, ImageTextTable, TokenizedCaptions, WebDatasetPairs,
                       build_caption_dataset)
from .folder import CorruptImageError
from .loader import make_loader, materialize
from .registry import DEFAULT_DATASET, build_dataset, list_datasets

__all__ = [
    "DEFAULT_DATASET", "SPLITS", "CaptionDataset", "CorruptImageError", "GeneratedDataset", "ImageDataset",
    "ImageTextFolder", "ImageTextTable", "TokenizedCaptions", "WebDatasetPairs", "build_caption_dataset",
    "build_dataset", "list_datasets", "make_loader", "materialize", "random_crop_flip",
]
