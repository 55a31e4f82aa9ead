"""Zero-shot classification and image-text retrieval for image-text models (`encode_image` / `encode_text`).

Zero-shot classification as in CLIP (Radford et al. 2021, Sec. 3.1.4): each class name is put into several prompt
templates, the L2-normalised text embeddings of its prompts are averaged and re-normalised ("prompt ensembling"),
and an image is assigned the class whose embedding has the largest cosine similarity with its own. Natural images
get a few of CLIP's ImageNet templates ("a photo of a {}."); the built-in generated tasks get templates worded like
the captions of `sparsevision.data.captions`, so a model trained on those captions is asked in its own words.

Retrieval: recall@k in both directions from the cosine similarity of all image and text embeddings. Image -> text:
an image counts as retrieved if any of its captions is among the k most similar texts (COCO / Flickr convention
when an image has several captions); text -> image: its image is among the k most similar images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# A subset of CLIP's 80 ImageNet prompts (its notebook's "7 best" style: plain, quality and size variations).
PHOTO_TEMPLATES = ("a photo of a {}.", "a bad photo of the {}.", "a photo of the large {}.",
                   "a photo of the small {}.", "art of the {}.", "a close-up photo of a {}.")

# Worded like the generated captions (which carry no final period). For the dSprites position / rotation tasks the
# templates average over the three shapes, a nuisance factor for those labels.
GENERATED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "dsprites_shape": ("an image of a {}", "a picture of a {}", "a {}"),
    "dsprites_location": ("an image of a square at {}", "an image of an ellipse at {}", "an image of a heart at {}"),
    "dsprites_orientation": ("an image of a square {}", "an image of an ellipse {}", "an image of a heart {}"),
    "counting": ("an image of {}", "a picture of {}", "{} on a grey floor"),
    "textures": ("an image of a {} texture", "a {} texture", "a picture of a {} pattern"),
    "digits": ("a handwritten digit {}", "an image of the digit {}", "the digit {}"),
}


def templates_for(dataset_name: str) -> tuple[str, ...]:
    """The default prompt templates of a dataset: its generated-task wording, else CLIP-style photo prompts.
    A captioned view of a task (`captions:<task>`, `data.captions.CaptionDataset.name`) gets the task's templates."""
    return GENERATED_TEMPLATES.get(dataset_name.removeprefix("captions:"), PHOTO_TEMPLATES)


def _check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise ValueError("need at least one prompt template")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template must contain exactly one '{{}}' for the class name; bad: {bad[:3]}")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def class_embeddings(model, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256) -> torch.Tensor:
    """[C, D] unit vectors: per class, the re-normalised mean of its normalised prompt embeddings."""
    _check_templates(templates)
    if not class_names:
        raise ValueError("zero-shot classification needs at least one class name")
    prompts = [t.format(name) for name in class_names for t in templates]
    device = _device(model)
    chunks = [model.encode_text(tokenizer(prompts[i:i + batch_size]).to(device)).float()
              for i in range(0, len(prompts), batch_size)]
    emb = F.normalize(torch.cat(chunks), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zeroshot_logits(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """[N, C] cosine similarities between (normalised) image embeddings and class embeddings."""
    if image_emb.ndim != 2 or class_emb.ndim != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(f"need image_emb [N, D] and class_emb [C, D]; got {tuple(image_emb.shape)} and "
                         f"{tuple(class_emb.shape)}")
    return F.normalize(image_emb.float(), dim=-1) @ F.normalize(class_emb.float(), dim=-1).t()


@torch.no_grad()
def encode_images(model, dataset, batch_size: int = 256, max_examples: int | None = None):
    """(normalised image embeddings [N, D], labels LongTensor [N]) of the first `max_examples` items; items are
    (image, label) or (image, caption, label)."""
    from ..transfer.features import map_dataset

    return map_dataset(model, dataset, lambda images: F.normalize(model.encode_image(images).float(), dim=-1),
                       batch_size, max_examples, _device(model), progress=False, desc="image embeddings")


@torch.no_grad()
def zeroshot_classify(model, dataset, tokenizer=None, templates: Sequence[str] | None = None,
                      batch_size: int = 256, max_examples: int | None = None) -> dict:
    """Zero-shot accuracy of `model` on a labelled dataset with `class_names`; reports chance levels too."""
    class_names = list(getattr(dataset, "class_names", []) or [])
    if not class_names:
        raise ValueError(f"dataset {getattr(dataset, 'name', dataset)!r} has no class_names to build prompts from")
    templates = tuple(templates or templates_for(getattr(dataset, "name", "")))
    tokenizer = tokenizer or model.build_tokenizer()
    was_training = model.training
    model.eval()
    try:
        classes = class_embeddings(model, tokenizer, class_names, templates, batch_size)
        images, labels = encode_images(model, dataset, batch_size, max_examples)
    finally:
        model.train(was_training)
    logits = zeroshot_logits(images, classes.cpu())
    result = {"accuracy": float((logits.argmax(1) == labels).float().mean()),
              "chance": 1.0 / len(class_names),
              "majority": float(np.bincount(labels.numpy(), minlength=len(class_names)).max() / len(labels)),
              "num_examples": len(labels), "num_classes": len(class_names), "templates": list(templates)}
    if len(class_names) > 5:
        top5 = logits.topk(5, dim=1).indices
        result["top5_accuracy"] = float((top5 == labels[:, None]).any(1).float().mean())
    return result


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5),
                     text_to_image: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@k both ways. text_to_image[t] is the image index of text t (default: text i belongs to image i)."""
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"need image_emb [N, D] and text_emb [T, D]; got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    if text_to_image is None:
        if num_images != num_texts:
            raise ValueError(f"{num_images} images and {num_texts} texts: pass text_to_image to pair them")
        text_to_image = torch.arange(num_texts)
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long).cpu()
    if text_to_image.shape != (num_texts,) or int(text_to_image.min()) < 0 or int(text_to_image.max()) >= num_images:
        raise ValueError(f"text_to_image must hold {num_texts} image indices in [0, {num_images})")
    sim = (F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).t()).cpu()  # [N, T]
    owns = text_to_image[None, :] == torch.arange(num_images)[:, None]  # [N, T] text t describes image i
    result = {}
    for k in ks:
        if not 1 <= k:
            raise ValueError(f"recall@k needs k >= 1, got {k}")
        top_texts = sim.topk(min(k, num_texts), dim=1).indices  # [N, k]
        result[f"i2t_recall@{k}"] = float(owns.gather(1, top_texts).any(1).float().mean())
        top_images = sim.t().topk(min(k, num_images), dim=1).indices  # [T, k]
        result[f"t2i_recall@{k}"] = float((top_images == text_to_image[:, None]).any(1).float().mean())
    return result


@torch.no_grad()
def evaluate_retrieval(model, caption_dataset, tokenizer=None, ks: Sequence[int] = (1, 5), batch_size: int = 256,
                       max_examples: int | None = 1000) -> dict[str, float]:
    """Recall@k over the first `max_examples` (image, caption, label) pairs of a caption dataset."""
    tokenizer = tokenizer or model.build_tokenizer()
    n = len(caption_dataset) if max_examples is None else min(len(caption_dataset), max_examples)
    if n == 0:
        raise ValueError("the caption dataset is empty")
    device = _device(model)
    was_training = model.training
    model.eval()
    images, texts = [], []
    try:
        for start in range(0, n, batch_size):
            items = [caption_dataset[i] for i in range(start, min(n, start + batch_size))]
            batch = torch.stack([item[0] for item in items]).to(device)
            images.append(F.normalize(model.encode_image(batch).float(), dim=-1).cpu())
            tokens = tokenizer([item[1] for item in items]).to(device)
            texts.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return {**retrieval_recall(torch.cat(images), torch.cat(texts), ks), "num_pairs": n}
