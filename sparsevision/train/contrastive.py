"""Image-text contrastive training (CLIP / SigLIP / LIMoE) as a train-loop objective, its presets, and the LIMoE
modality plot.

`objective="contrastive"` trains any `ImageTextModel` (`models/two_tower.py`, `models/limoe.py`) on captioned
images: `data.dataset` is a built-in task (captioned from its generative factors by `data.captions`), `pairs:<folder
or csv/tsv>` or another caption source of `build_caption_dataset`. One step is

    loss = contrastive(img_emb, txt_emb)  [the model's CLIP softmax or SigLIP sigmoid loss, learnable temperature]
         + aux["aux_loss"]               [MoE importance/load losses; for LIMoE also its weighted entropy losses]

Metrics: `contrastive_loss`, in-batch `i2t_acc` / `t2i_acc` (and their mean as `accuracy`, for the loop's curves),
the temperature, the MoE means, LIMoE's per-modality entropies, and in evaluation (model in eval mode, dataset with
class names) `zeroshot_accuracy`: each image of the batch classified by prompts built from the class names, so the
loop's per-example average is the zero-shot accuracy over the whole val / test split.

At the end of a run `on_train_end(model, run_dir)` writes `modality_experts.png` / `.json` for models that report
per-expert token counts (LIMoE): for every MoE layer, the share of each expert's tokens that were image vs text
tokens (the paper's Fig. 6-style modality analysis).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from .objectives import Objective, moe_metrics, register_objective
from .presets import register_preset

MODALITY_PLOT = "modality_experts.png"
MODALITY_JSON = "modality_experts.json"


def _meta_model(config: TrainConfig) -> nn.Module:
    """The configured model built on the meta device (no memory, no init) to read its tokenizer settings."""
    from ..models import create_model

    overrides = {"img_size": config.data.image_size, **config.model.overrides}
    with torch.device("meta"):
        return create_model(config.model.name, **overrides)


class ContrastiveObjective(Objective):
    """Contrastive image-text loss + the model's auxiliary losses; see the module docstring.

    templates: zero-shot prompt templates for the eval metric (default: `templates_for(dataset)`).
    zeroshot: compute `zeroshot_accuracy` in evaluation when the dataset has class names.
    modality_examples: how many val examples `on_train_end` routes for the modality plot.
    """

    def __init__(self, templates: list[str] | None = None, zeroshot: bool = True, modality_examples: int = 512):
        self.templates = tuple(templates) if templates else None
        self.zeroshot = zeroshot
        self.modality_examples = modality_examples
        self.class_names: list[str] = []
        self.dataset_name = ""
        self._tokenizer = None
        self._val = None

    def build_dataset(self, config: TrainConfig, split: str):
        from ..data.captions import TokenizedCaptions, build_caption_dataset

        captions = build_caption_dataset(config.data.dataset, split=split, image_size=config.data.image_size,
                                         seed=config.data.seed)
        if not hasattr(captions, "__len__"):
            raise ValueError(f"data.dataset={config.data.dataset!r} streams (webdataset); the train loop needs a "
                             f"map-style dataset: use a built-in task or pairs:<folder | csv | tsv>")
        model = _meta_model(config)
        if not hasattr(model, "build_tokenizer"):
            raise ValueError(f"objective=contrastive needs an image-text model (two_tower_*, limoe_*); "
                             f"{config.model.name!r} is not one")
        dataset = TokenizedCaptions(captions, model.build_tokenizer())
        self.class_names = list(getattr(captions, "class_names", []) or [])
        self.dataset_name = config.data.dataset
        if split == "val":
            self._val = dataset
        return dataset

    def model_overrides(self, config: TrainConfig, train_dataset) -> dict[str, Any]:
        return {"img_size": config.data.image_size}

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        images, tokens, labels = batch
        # Cut padding columns no text of the batch reaches: they change no embedding and only cost compute (for
        # LIMoE, whose routing groups are per sequence, capacity then follows the batch's longest text).
        tokens = tokens[:, : max(1, int((tokens != getattr(model, "pad_id", 0)).sum(1).max()))]
        img_emb, txt_emb, aux = model(images, tokens)
        task_loss, loss_metrics = model.contrastive_loss(img_emb, txt_emb)
        aux_loss = aux["aux_loss"].float()
        loss = task_loss + aux_loss
        metrics = {"loss": loss.detach(), "contrastive_loss": task_loss.detach(),
                   "accuracy": 0.5 * (loss_metrics["i2t_acc"] + loss_metrics["t2i_acc"]),
                   **{k: v.detach() for k, v in loss_metrics.items()}}
        if aux.get("moe"):
            metrics["aux_loss"] = aux_loss.detach()
            metrics.update(moe_metrics(aux))
        for name, value in aux.get("entropy", {}).items():
            metrics[f"entropy/{name}"] = value.detach()
        if not model.training and self.zeroshot and self.class_names and bool((labels >= 0).all()):
            metrics["zeroshot_accuracy"] = self._zeroshot_accuracy(model, img_emb.detach(), labels)
        return loss, metrics

    def _zeroshot_accuracy(self, model: nn.Module, img_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from ..evaluate.zeroshot import class_embeddings, templates_for, zeroshot_logits

        if self._tokenizer is None:
            self._tokenizer = model.build_tokenizer()
        templates = self.templates or templates_for(self.dataset_name)
        classes = class_embeddings(model, self._tokenizer, self.class_names, templates)
        return (zeroshot_logits(img_emb, classes).argmax(1) == labels).float().mean()

    @torch.no_grad()
    def on_train_end(self, model: nn.Module, run_dir: str | os.PathLike) -> Path | None:
        """Route up to `modality_examples` val pairs and write the modality plot (LIMoE; None for other models)."""
        if self._val is None or self.modality_examples < 1:
            return None
        counts = modality_counts(model, self._val, self.modality_examples)
        if counts is None:
            return None
        from .checkpoint import atomic_write_bytes

        payload = json.dumps({k: v.tolist() for k, v in counts.items()}).encode()
        atomic_write_bytes(Path(run_dir, MODALITY_JSON), payload)
        return plot_modality_experts(counts, Path(run_dir) / MODALITY_PLOT)


@torch.no_grad()
def modality_counts(model: nn.Module, dataset, max_examples: int = 512, batch_size: int = 128):
    """{"image": [L, E], "text": [L, E]} token counts per MoE layer and expert (eval mode), or None when the model
    reports no expert counts."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total: dict[str, np.ndarray] = {}
    try:
        n = min(len(dataset), max_examples)
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            images = torch.stack([item[0] for item in items]).to(device)
            tokens = torch.stack([item[1] for item in items]).to(device)
            _, _, aux = model(images, tokens)
            if not aux.get("expert_counts"):
                return None
            for modality, counts in aux["expert_counts"].items():
                total[modality] = total.get(modality, 0) + counts.cpu().numpy()
    finally:
        model.train(was_training)
    return total


def plot_modality_experts(counts: dict, path: str | os.PathLike, normalize_modalities: bool = False) -> Path:
    """Stacked bars, one panel per MoE layer: for each expert the fraction of its tokens that are image / text.

    counts: {modality: array [E] or [L, E]} of routed token counts. normalize_modalities: divide each modality's
    counts by its total first, so the bars compare routing preferences rather than raw traffic (images have many
    more tokens than captions). Experts that received no tokens get an empty bar.
    """
    from ..utils.figures import new_figure, save_figure

    if not counts:
        raise ValueError("plot_modality_experts needs counts for at least one modality")
    arrays = {m: np.atleast_2d(np.asarray(c, dtype=np.float64)) for m, c in counts.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"every modality needs counts of the same shape [layers, experts]; got "
                         f"{ {m: a.shape for m, a in arrays.items()} }")
    if any((a < 0).any() for a in arrays.values()):
        raise ValueError("token counts must be non-negative")
    if normalize_modalities:
        arrays = {m: a / np.maximum(a.sum(-1, keepdims=True), 1e-12) for m, a in arrays.items()}
    num_layers, num_experts = next(iter(shapes))
    totals = sum(arrays.values())
    fig = new_figure((max(4.0, 0.5 * num_experts + 2), 2.6 * num_layers))
    colors = {"image": "tab:blue", "text": "tab:orange"}
    for layer in range(num_layers):
        ax = fig.add_subplot(num_layers, 1, layer + 1)
        bottom = np.zeros(num_experts)
        for modality, a in arrays.items():
            share = np.divide(a[layer], totals[layer], out=np.zeros(num_experts), where=totals[layer] > 0)
            ax.bar(np.arange(num_experts), share, bottom=bottom, label=modality, color=colors.get(modality))
            bottom += share
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(num_experts))
        ax.set_ylabel(f"MoE layer {layer}\nshare")
        if layer == 0:
            ax.legend(loc="upper right", fontsize=8)
    fig.axes[-1].set_xlabel("expert")
    fig.suptitle("tokens per expert by modality" + (" (per-modality normalised)" if normalize_modalities else ""))
    fig.tight_layout()
    return save_figure(fig, path)


register_objective("contrastive", lambda config: ContrastiveObjective(**config.objective_args))

# ---------------------------------------------------------------------------------------------------- presets

# A tiny LIMoE aligning scikit-learn digits with captions written from their labels ("a handwritten digit 3"), on
# the CPU in about a minute; its val / test `zeroshot_accuracy` (10 classes, chance 0.1) is the number to watch.
# Digits rather than dSprites: a sprite covers 1-2 of 16 patches, so at initialisation all dSprites images embed
# almost alike (cosine ~0.996) and contrastive training sits on a plateau for the first ~100 steps; digits fill
# the frame. Mean-pooled text ("gap") gives the byte-level text tower a bag-of-bytes feature from the first step.
# `--set data.dataset=dsprites_shape` (or counting, textures) trains on the generated tasks' factor captions.
LIMOE_TINY = TrainConfig(
    model=ModelConfig("limoe_tiny_test", {"width": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128,
                                          "moe_layers": [1, 3], "num_experts": 4, "text_pool": "gap"}),
    data=DataConfig(dataset="digits", image_size=32, batch_size=64, eval_batch_size=256),
    optim=OptimConfig(name="adamw", lr=2e-3, weight_decay=0.05, warmup_steps=10, schedule="cosine"),
    objective="contrastive",
    steps=300, eval_every=100, log_every=20, checkpoint_every=300, device="cpu",
)

# The same data with a two-tower model (ViT image tower, text transformer): CLIP's softmax loss, or SigLIP's sigmoid.
CLIP_TINY = dataclasses.replace(
    LIMOE_TINY, model=ModelConfig("two_tower_tiny_test", {"image_overrides": {"width": 64, "depth": 4, "num_heads": 4,
                                                                              "mlp_dim": 128},
                                                          "text_overrides": {"pool": "gap"}, "max_len": 48}))
SIGLIP_TINY = dataclasses.replace(
    CLIP_TINY, model=dataclasses.replace(CLIP_TINY.model, overrides={**CLIP_TINY.model.overrides, "loss": "sigmoid"}))

for _name, _config in [("limoe-tiny", LIMOE_TINY), ("clip-tiny", CLIP_TINY), ("siglip-tiny", SIGLIP_TINY)]:
    register_preset(_name, _config)
