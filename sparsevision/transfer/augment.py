"""BiT fine-tuning pre-processing on batches: resize, random crop, flip, and MixUp, each from an explicit generator.

Training (big_transfer `train.py`): Resize((resize, resize)) -> RandomCrop((crop, crop)) -> RandomHorizontalFlip.
Evaluation: Resize((crop, crop)) of the whole image, no crop.
MixUp (Zhang et al. 2018, as BiT): one lambda ~ Beta(alpha, alpha) per batch, x = lam * x + (1 - lam) * x[perm]
with a random permutation of the batch, loss = lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import augment as data_augment


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (anti-aliased when shrinking) resize of a [B, C, H, W] batch to size x size; a no-op at that size."""
    if images.ndim != 4:
        raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def random_crop(images: torch.Tensor, crop: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """A crop x crop window at a random offset per image, mirrored left-right with probability 1/2 if `flip`."""
    return data_augment.random_crop(images, (crop, crop), generator, flip=flip)


def train_transform(images: torch.Tensor, resize: int, crop: int, generator: torch.Generator,
                    flip: bool = True) -> torch.Tensor:
    return random_crop(resize_images(images, resize), crop, generator, flip=flip)


def mixup(images: torch.Tensor, labels: torch.Tensor, lam: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam * images + (1 - lam) * images[perm], labels, labels[perm]) with perm a random permutation."""
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1.0 - lam) * images[perm], labels, labels[perm]


def mixup_cross_entropy(logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor,
                        lam: float) -> torch.Tensor:
    """lam * CE(logits, labels_a) + (1 - lam) * CE(logits, labels_b), each a batch mean (BiT's mixup_criterion)."""
    logits = logits.float()
    if lam == 1.0:
        return F.cross_entropy(logits, labels_a)
    return lam * F.cross_entropy(logits, labels_a) + (1.0 - lam) * F.cross_entropy(logits, labels_b)
