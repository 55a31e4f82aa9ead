"""Which expert do images of each class use? The data behind the V-MoE paper's routing heat maps (Riquelme et al.
2021, Fig. 7 and Appendix: per MoE layer, the share of each class's patches whose first choice is each expert).

`routing_heatmap` counts, per MoE layer, tokens whose top-1 expert is e in images of class c, from the layers'
`MoeMetrics.top_expert` (a first choice dropped for lack of capacity counts nowhere; see MoeMetrics for what the
expert-choice and soft routers report there). `plot_routing_heatmaps` draws them, one panel per layer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn


@torch.no_grad()
def routing_heatmap(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                    include_prefix_tokens: bool = False) -> list[torch.Tensor]:
    """Per MoE layer, a [num_experts, num_classes] int64 tensor of top-1 expert counts.

    batches: (images, labels) pairs (a DataLoader or a list with one batch). Prefix tokens (the class token) are
    left out unless `include_prefix_tokens`, as the paper's maps are of image patches. The model is run in eval mode
    (eval capacity, no routing noise) and restored to its previous mode after.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    was_training = model.training
    model.eval()
    prefix = 0 if include_prefix_tokens else int(getattr(model, "num_prefix_tokens", 0))
    counts: list[torch.Tensor] | None = None
    try:
        for images, labels in batches:
            labels = torch.as_tensor(labels).long()
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            _, aux = model(images, return_aux=True)
            metrics = aux["moe"]
            if not metrics:
                raise ValueError("the model has no MoE layer (its aux['moe'] list is empty)")
            if counts is None:
                counts = [torch.zeros(m.expert_load.numel(), num_classes, dtype=torch.long) for m in metrics]
            for layer, m in enumerate(metrics):
                top = m.top_expert.cpu()
                if top.shape[0] != labels.shape[0]:
                    raise ValueError(f"top_expert has batch {top.shape[0]} but labels have {labels.shape[0]}")
                top = top[:, prefix:]
                cls = labels[:, None].expand_as(top)
                kept = top >= 0
                num_experts = counts[layer].shape[0]
                flat = top[kept] * num_classes + cls[kept]
                counts[layer] += torch.bincount(flat, minlength=num_experts * num_classes).view(num_experts,
                                                                                             num_classes)
    finally:
        model.train(was_training)
    if counts is None:
        raise ValueError("routing_heatmap got no batch")
    return counts


def plot_routing_heatmaps(counts: Sequence[torch.Tensor], path, class_names: Sequence[str] | None = None,
                          layer_names: Sequence[str] | None = None, normalize: str = "class") -> None:
    """Save one heat map per layer: experts on the rows, classes on the columns.

    normalize: "class" (each column sums to 1: which experts a class uses, as the paper), "expert" (rows) or "none".
    """
    from ..utils.figures import new_figure, save_figure

    if normalize not in ("class", "expert", "none"):
        raise ValueError(f"normalize must be 'class', 'expert' or 'none', got {normalize!r}")
    if not counts:
        raise ValueError("no routing counts to plot")
    fig = new_figure((3.2 * len(counts), 3.2))
    axes = fig.subplots(1, len(counts), squeeze=False)
    for index, (ax, table) in enumerate(zip(axes[0], counts)):
        table = table.double()
        if normalize == "class":
            table = table / table.sum(0, keepdim=True).clamp_min(1)
        elif normalize == "expert":
            table = table / table.sum(1, keepdim=True).clamp_min(1)
        image = ax.imshow(table.numpy(), aspect="auto", cmap="viridis", interpolation="nearest",
                          vmin=0, vmax=1 if normalize != "none" else None)
        ax.set_yticks(range(table.shape[0]))
        ax.set_title(layer_names[index] if layer_names else f"MoE layer {index}")
        ax.set_xlabel("class")
        ax.set_ylabel("expert")
        if class_names is not None and len(class_names) <= 20:
            ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=6)
    label = {"class": "share of the class's patches", "expert": "share of the expert's patches",
             "none": "patches"}[normalize]
    fig.colorbar(image, ax=list(axes[0]), label=label)
    save_figure(fig, path, dpi=120, bbox_inches="tight")


ROUTING_PLOT, ROUTING_JSON = "routing.png", "routing.json"


def write_routing_heatmaps(model: nn.Module, dataset, out_dir, max_examples: int = 512,
                           batch_size: int = 128) -> Path | None:
    """Count (`routing_heatmap`) and plot the routing of the first `max_examples` items of a labelled dataset into
    `out_dir/routing.png` and `routing.json`; None (nothing written) for a model without MoE layers."""
    from ..data.loader import make_loader
    from ..train.checkpoint import atomic_write_bytes

    from ..moe import MoeMlp

    if not any(isinstance(m, MoeMlp) for m in model.modules()):
        return None
    device = next(model.parameters()).device
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), max_examples)))
    batches = ((images.to(device), labels) for images, labels in make_loader(subset, batch_size))
    counts = routing_heatmap(model, batches, dataset.num_classes)
    out_dir = Path(out_dir)
    blocks = getattr(model, "moe_layers", None)
    layer_names = [f"MoE layer in block {i}" for i in blocks] if blocks and len(blocks) == len(counts) else None
    plot_routing_heatmaps(counts, out_dir / ROUTING_PLOT, class_names=getattr(dataset, "class_names", None),
                          layer_names=layer_names)
    payload = {"examples": len(subset), "class_names": list(getattr(dataset, "class_names", []) or []),
               "counts_expert_by_class": [c.tolist() for c in counts]}
    atomic_write_bytes(out_dir / ROUTING_JSON, json.dumps(payload).encode())
    return out_dir / ROUTING_PLOT
