"""Frozen features of a dataset under a model: the input of few-shot ridge, kNN, linear probes and model selection.

A feature is the model's pre-logits vector (`forward_head(forward_features(x), pre_logits=True)`): the pooled,
normalised representation the classifier head sees, as the V-MoE / big_vision few-shot evaluators use. Two-tower
image-text models give their image embedding instead.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


def model_image_size(model: nn.Module) -> int:
    """Input resolution a model was built for (ViT / V-MoE / Mixer / two-tower and LIMoE image sides)."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:
        raise ValueError(f"cannot tell the input resolution of {type(model).__name__}: it has no patch_embed")
    size = patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _encode(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "encode_image"):
        return model.encode_image(images)
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.no_grad()
def map_dataset(model: nn.Module, dataset, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 128,
                max_examples: int | None = None, device: str | torch.device | None = None, progress: bool = True,
                desc: str = "features", image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(images) float32 [N, ...] on the CPU, labels int64 [N]) over the first `max_examples` items, batched,
    with `model` in eval mode (MoE layers use their eval capacity factor) and put back in the mode it was in.

    Items are (image, label) or (image, ..., label). `image_size`: resize the images to this square size first
    (bilinear, anti-aliased; BiT's evaluation pre-processing), e.g. the resolution a model was fine-tuned at.
    """
    from .augment import resize_images

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset) if max_examples is None else min(len(dataset), int(max_examples))
    if n == 0:
        raise ValueError(f"cannot compute {desc} of an empty dataset")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=None if progress else True, leave=False):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            images = torch.stack([item[0] for item in items]).to(device)
            if image_size is not None:
                images = resize_images(images, image_size)
            outputs.append(fn(images).float().cpu())
            labels += [int(item[-1]) for item in items]
    finally:
        model.train(was_training)
    return torch.cat(outputs), torch.tensor(labels, dtype=torch.long)


def extract_features(model: nn.Module, dataset, batch_size: int = 128, max_examples: int | None = None,
                     device: str | torch.device | None = None, progress: bool = True,
                     desc: str = "features", image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D] on the CPU, labels int64 [N]) for the first `max_examples` items of `dataset`
    (see `map_dataset` for the items, eval mode and `image_size`)."""
    return map_dataset(model, dataset, lambda images: _encode(model, images), batch_size, max_examples, device,
                       progress, desc, image_size)
