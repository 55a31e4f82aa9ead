"""Objectives: what one training step computes, separate from the loop that runs the steps.

An objective is called as `objective(model, batch) -> (loss, metrics)`: `loss` is the scalar to minimise (auxiliary
MoE losses already added), `metrics` a flat dict of scalar tensors or floats that are means over the batch (they
are logged, and averaged over examples for evaluation). Besides the call it says which datasets it trains on and
which constructor arguments the model needs from them, so the loop stays the same for a new task (e.g. the
image-text contrastive training of LIMoE): register a factory with `register_objective(name, factory)` and pick
it with `objective=<name>` in the config.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import torch
from torch import nn

from ..losses.classification import accuracy, classification_loss
from .config import TrainConfig


class Objective:
    """Base class; subclasses implement `__call__` and may override the hooks below."""

    def build_dataset(self, config: TrainConfig, split: str):
        from ..data import build_dataset

        return build_dataset(config.data.dataset, split=split, image_size=config.data.image_size,
                             seed=config.data.seed)

    def model_overrides(self, config: TrainConfig, train_dataset) -> dict[str, Any]:
        """Constructor arguments the model gets from the data unless the config sets them."""
        return {}

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def on_train_end(self, model: nn.Module, run_dir) -> None:
        """Called once after the final test evaluation of a completed run (e.g. to write extra plots)."""
        return None


def moe_metrics(aux: dict) -> dict[str, float | torch.Tensor]:
    """Mean over MoE layers of each scalar field of their metrics (`moe/<field>`), plus `moe/expert_load_max`,
    the mean over layers of the busiest expert's share (1/E when balanced). Empty for dense models."""
    layers = aux.get("moe") or []
    if not layers:
        return {}
    sums: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        items = layer.items() if isinstance(layer, dict) else (
            (f.name, getattr(layer, f.name)) for f in dataclasses.fields(layer))
        for name, value in items:
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                sums.setdefault(f"moe/{name}", []).append(value.detach().float())
            elif name == "expert_load" and isinstance(value, torch.Tensor) and value.numel():
                sums.setdefault("moe/expert_load_max", []).append(value.detach().float().max())
    return {name: torch.stack(values).mean() for name, values in sums.items()}


class ClassificationObjective(Objective):
    """Softmax or sigmoid cross-entropy on (images, labels), plus the model's auxiliary (MoE) loss."""

    def __init__(self, kind: str = "softmax", label_smoothing: float = 0.0, routing_examples: int = 512):
        self.kind = kind
        self.label_smoothing = label_smoothing
        self.routing_examples = routing_examples
        self._val_dataset = None

    def build_dataset(self, config: TrainConfig, split: str):
        dataset = super().build_dataset(config, split)
        if split == "val":
            self._val_dataset = dataset  # routed again at the end for the heat map
        return dataset

    def model_overrides(self, config: TrainConfig, train_dataset) -> dict[str, Any]:
        return {"num_classes": train_dataset.num_classes, "img_size": config.data.image_size}

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = batch
        logits, aux = model(images, return_aux=True)
        task_loss = classification_loss(self.kind, logits, labels, self.label_smoothing)
        aux_loss = aux["aux_loss"].float()
        loss = task_loss + aux_loss
        metrics = {"loss": loss.detach(), "task_loss": task_loss.detach(),
                   "accuracy": accuracy(logits.detach(), labels)}
        if aux.get("moe"):
            metrics["aux_loss"] = aux_loss.detach()
            metrics.update(moe_metrics(aux))
        return loss, metrics


    def on_train_end(self, model: nn.Module, run_dir) -> None:
        """MoE models: `routing.png` / `routing.json`, per MoE layer the share of each class's patches whose first
        choice is each expert (V-MoE Fig. 7), on the first `routing_examples` validation images."""
        from ..models.vmoe_analysis import write_routing_heatmaps

        if self._val_dataset is not None and self.routing_examples > 0:
            write_routing_heatmaps(model, self._val_dataset, run_dir, max_examples=self.routing_examples)


_OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    "classification": lambda config: ClassificationObjective(**{
        "kind": config.loss.kind, "label_smoothing": config.loss.label_smoothing, **config.objective_args}),
}


def register_objective(name: str, factory: Callable[[TrainConfig], Objective]) -> None:
    """Make `objective=name` build `factory(config)`; the factory reads what it needs from the config
    (`config.objective_args` holds free-form options)."""
    if name in _OBJECTIVES:
        raise ValueError(f"objective {name!r} is registered twice")
    _OBJECTIVES[name] = factory


def build_objective(config: TrainConfig) -> Objective:
    if config.objective not in _OBJECTIVES:
        from .presets import discover_plugins  # objectives registered by plugin modules (e.g. "contrastive")

        discover_plugins()
    if config.objective not in _OBJECTIVES:
        close = difflib.get_close_matches(config.objective, list(_OBJECTIVES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown objective {config.objective!r}{hint} (registered: {', '.join(sorted(_OBJECTIVES))})")
    return _OBJECTIVES[config.objective](config)
