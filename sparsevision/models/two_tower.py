"""Two-tower image-text models (CLIP, Radford et al. 2021; LiT, Zhai et al. 2022; SigLIP, Zhai et al. 2023), after
big_vision's `models/proj/image_text/two_towers.py`.

An image tower (any registered ViT or V-MoE, built with `num_classes=0` so it returns its pooled features) and a
text tower (`TextTransformer`) are each projected to a shared `embed_dim`; the contrastive loss, with its learnable
temperature (and SigLIP's bias), lives in the model as in big_vision, so the optimiser and the checkpoint see it.

LiT ("Locked-image Tuning"): `lock_image=True` freezes every image-tower parameter and keeps the tower in eval mode
(dropout off, no router noise) whatever `model.train()` says; the linear projection into the shared space stays
trainable, so a tower pre-trained for classification can be aligned to text (LiT's "Lu" setting with a new head).

`ImageTextModel` is the interface shared with LIMoE (`limoe.py`) that zero-shot evaluation and the contrastive
objective rely on: `encode_image`, `encode_text`, `forward(images, tokens) -> (img_emb, txt_emb, aux)`,
`contrastive_loss(img_emb, txt_emb) -> (loss, metrics)` and `build_tokenizer()`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..losses.contrastive import ClipLoss, SigLipLoss
from .registry import create_model, register_model
from .text import TextTransformer, create_text_transformer
from .vit import aux_from_metrics

CONTRASTIVE_LOSSES = ("softmax", "sigmoid")


def build_contrastive_loss(kind: str) -> nn.Module:
    """'softmax' = CLIP's symmetric InfoNCE, 'sigmoid' = SigLIP's pairwise sigmoid; each with its paper's init."""
    if kind == "softmax":
        return ClipLoss()
    if kind == "sigmoid":
        return SigLipLoss()
    raise ValueError(f"unknown contrastive loss {kind!r}; expected one of {CONTRASTIVE_LOSSES}")


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax's default Dense init (big_vision's projection heads): truncated normal with variance 1/fan_in."""
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class ImageTextModel(nn.Module):
    """What every image-text model here provides; subclasses implement the two encoders."""

    tokenizer_spec: str
    max_len: int
    vocab_size: int

    def encode_image(self, images: torch.Tensor, return_aux: bool = False):
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor, return_aux: bool = False):
        raise NotImplementedError

    def build_tokenizer(self):
        """The tokenizer this model was built for (`tokenizer` constructor argument), padding to `max_len`."""
        from ..text import build_tokenizer

        tokenizer = build_tokenizer(self.tokenizer_spec, max_len=self.max_len)
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(f"tokenizer {self.tokenizer_spec!r} has vocab_size={tokenizer.vocab_size}, larger than "
                             f"the model's vocab_size={self.vocab_size}")
        return tokenizer


class TwoTower(ImageTextModel):
    def __init__(self, image_tower: nn.Module, text_tower: TextTransformer, embed_dim: int, lock_image: bool = False,
                 loss: str = "softmax", tokenizer: str = "bytes"):
        super().__init__()
        features = getattr(image_tower, "num_features", None)
        if not isinstance(features, int):
            raise ValueError(f"image tower {type(image_tower).__name__} has no integer `num_features`")
        if getattr(image_tower, "num_classes", 0):
            raise ValueError(f"the image tower must be built with num_classes=0 (pooled features), "
                             f"got num_classes={image_tower.num_classes}")
        if text_tower.out_dim != embed_dim:
            raise ValueError(f"text tower out_dim={text_tower.out_dim} must equal embed_dim={embed_dim}")
        self.image_tower = image_tower
        self.image_proj = nn.Linear(features, embed_dim)
        lecun_normal_(self.image_proj.weight)
        nn.init.zeros_(self.image_proj.bias)
        self.text_tower = text_tower
        self.embed_dim = embed_dim
        self.loss_kind = loss
        self.contrastive_loss = build_contrastive_loss(loss)
        self.tokenizer_spec, self.max_len, self.vocab_size = tokenizer, text_tower.max_len, text_tower.vocab_size
        self.pad_id = text_tower.pad_id
        self.lock_image = lock_image
        if lock_image:
            self.image_tower.requires_grad_(False)
            self.image_tower.eval()

    @property
    def patch_embed(self):
        # Lets `count_flops` infer the input size (it then counts the image tower and its projection).
        return self.image_tower.patch_embed

    def train(self, mode: bool = True) -> "TwoTower":
        super().train(mode)
        if self.lock_image:
            self.image_tower.eval()  # LiT: the locked tower is a fixed feature extractor
        return self

    def encode_image(self, images: torch.Tensor, return_aux: bool = False):
        """Image embeddings [B, embed_dim] (not normalised; the losses and zero-shot normalise)."""
        if self.lock_image:
            with torch.no_grad():
                features, aux = self.image_tower(images, return_aux=True)
        else:
            features, aux = self.image_tower(images, return_aux=True)
        emb = self.image_proj(features)
        return (emb, aux) if return_aux else emb

    def encode_text(self, tokens: torch.Tensor, return_aux: bool = False):
        emb = self.text_tower(tokens)
        return (emb, aux_from_metrics([], emb.device)) if return_aux else emb

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None):
        """(img_emb or None, txt_emb or None, aux); aux = {"aux_loss", "moe"} of the image tower's MoE layers."""
        if images is None and tokens is None:
            raise ValueError("forward needs images, tokens or both; got neither")
        img_emb, txt_emb, metrics = None, None, []
        if images is not None:
            img_emb, aux = self.encode_image(images, return_aux=True)
            metrics = aux["moe"]
        if tokens is not None:
            txt_emb = self.encode_text(tokens)
        device = (img_emb if img_emb is not None else txt_emb).device
        return img_emb, txt_emb, aux_from_metrics(metrics, device)


def create_two_tower(image_model: str = "vit_tiny_test", text_variant: str = "test", embed_dim: int = 64,
                     img_size: int | None = None, image_overrides: dict | None = None,
                     text_overrides: dict | None = None, lock_image: bool = False, loss: str = "softmax",
                     tokenizer: str = "bytes", max_len: int = 32, vocab_size: int | None = None,
                     num_classes: int = 0) -> TwoTower:
    """A two-tower model from a registered image model name and a text size name (`VIT_SIZES` keys).

    num_classes: accepted so generic tools that pass it (`sparsevision models`) can build the model; a contrastive
        model has no classifier, so it is ignored. vocab_size defaults to the tokenizer's (259 for 'bytes').
    """
    del num_classes
    image_kwargs = dict(image_overrides or {}, num_classes=0)
    if img_size is not None:
        image_kwargs["img_size"] = img_size
    image_tower = create_model(image_model, **image_kwargs)
    if vocab_size is None:
        from ..text import build_tokenizer

        vocab_size = build_tokenizer(tokenizer, max_len=max_len).vocab_size
    text_kwargs = dict(vocab_size=vocab_size, max_len=max_len, out_dim=embed_dim, **(text_overrides or {}))
    text_tower = create_text_transformer(text_variant, **text_kwargs)
    return TwoTower(image_tower, text_tower, embed_dim, lock_image=lock_image, loss=loss, tokenizer=tokenizer)


def _builder(**defaults):
    def build(**overrides) -> TwoTower:
        return create_two_tower(**{**defaults, **overrides})

    return build


# Tiny: the test ViT and a test-sized text tower, byte tokens; for tests and CPU runs.
register_model("two_tower_tiny_test", _builder(image_model="vit_tiny_test", text_variant="test", embed_dim=64,
                                               max_len=32))
# B/16 image and B text towers, 16 text tokens and 768-d embeddings as big_vision's LiT/SigLIP B/16 configs.
register_model("two_tower_b16", _builder(image_model="vit_b16", text_variant="B", embed_dim=768, max_len=16,
                                         vocab_size=32_000, image_overrides={"pool": "gap"}))
