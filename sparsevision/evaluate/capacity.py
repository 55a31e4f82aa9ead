"""Accuracy of one trained MoE model at several test-time capacity factors (V-MoE, Riquelme et al. 2021, Sec. 4).

V-MoE trains with capacity factor ~1.05 and shows that at inference the per-expert buffers can be shrunk (C < 1,
processing only part of the tokens: "adaptive per-image compute") with little loss if Batch Priority Routing fills
the buffers by router confidence instead of token position. `evaluate_capacity_factors` measures that trade-off:
for each eval capacity factor it reports accuracy and the fraction of token choices that found a full buffer.
The model's own settings (eval capacity factors, BPR) are restored afterwards.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class CapacityResult:
    capacity_factor: float
    accuracy: float
    dropped_fraction: float  # mean over MoE layers and examples (see MoeMetrics.dropped_fraction)
    num_examples: int


def _moe_layers(model: nn.Module) -> list[nn.Module]:
    from ..moe import MoeMlp

    layers = [m for m in model.modules() if isinstance(m, MoeMlp)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MoE layer: capacity factors do not apply")
    return layers


def _batches(data, batch_size: int, max_examples: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches from a dataset or from an (images, labels) pair of tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        n = len(images) if max_examples is None else min(len(images), max_examples)
        for start in range(0, n, batch_size):
            yield images[start:min(n, start + batch_size)], torch.as_tensor(labels[start:min(n, start + batch_size)])
        return
    from torch.utils.data import Subset

    from ..data.loader import make_loader

    if max_examples is not None and max_examples < len(data):
        data = Subset(data, range(max_examples))
    yield from make_loader(data, batch_size=batch_size, shuffle=False)


def _check_factors(capacity_factors: Sequence[float]) -> list[float]:
    factors = [float(c) for c in capacity_factors]
    if not factors:
        raise ValueError("capacity_factors is empty")
    bad = [c for c in factors if not c > 0]
    if bad:
        raise ValueError(f"capacity factors must be > 0, got {bad}")
    return factors


@torch.no_grad()
def evaluate_capacity_factors(model: nn.Module, data, capacity_factors: Sequence[float], batch_size: int = 64,
                              batch_priority: bool = True, max_examples: int | None = None,
                              device: str | torch.device | None = None) -> list[CapacityResult]:
    """Top-1 accuracy of a classifier with MoE layers at each eval capacity factor.

    data: a dataset of (image, label) or an (images, labels) tensor pair. batch_priority: route with BPR (the
    paper's setting for reduced capacity); soft-routing layers have no capacity and are left as they are.
    """
    factors = _check_factors(capacity_factors)
    layers = _moe_layers(model)
    if not any(hasattr(m.router, "capacity_factor") for m in layers):
        raise ValueError("the model's MoE layers use soft routing, which has no capacity factor")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    saved = [(getattr(m.router, "eval_capacity_factor", None), getattr(m.router, "batch_priority", None))
             for m in layers]
    was_training = model.training
    model.eval()
    results = []
    try:
        for m in layers:
            m.set_batch_priority(batch_priority)
        for factor in factors:
            for m in layers:
                m.set_capacity_factor(eval=factor)
            correct = total = 0
            dropped = 0.0
            for images, labels in _batches(data, batch_size, max_examples):
                images, labels = images.to(device), labels.to(device)
                logits, aux = model(images, return_aux=True)
                correct += int((logits.argmax(-1) == labels).sum())
                total += len(labels)
                metrics = aux["moe"]
                dropped += float(sum(float(m.dropped_fraction) for m in metrics) / len(metrics)) * len(labels)
            if total == 0:
                raise ValueError("no example to evaluate")
            results.append(CapacityResult(factor, correct / total, dropped / total, total))
    finally:
        for m, (factor, bpr) in zip(layers, saved):
            if hasattr(m.router, "eval_capacity_factor"):
                m.router.eval_capacity_factor = factor
            if bpr is not None:
                m.set_batch_priority(bpr)
        model.train(was_training)
    return results


def save_capacity_results(results: Sequence[CapacityResult], json_path, plot_path=None, title: str = "",
                          info: dict | None = None) -> None:
    """Write the results as JSON (with `info`, e.g. model and data names) and, optionally, an accuracy plot."""
    from ..train.checkpoint import atomic_write_bytes
    from ..utils.figures import new_figure, save_figure

    payload = {**(info or {}), "results": [asdict(r) for r in results]}
    atomic_write_bytes(json_path, json.dumps(payload, indent=2).encode())
    if plot_path is None:
        return
    factors = [r.capacity_factor for r in results]
    fig = new_figure((4.5, 3.2))
    ax = fig.subplots()
    ax.plot(factors, [100 * r.accuracy for r in results], "o-", color="C0")
    ax.set_xlabel("eval capacity factor")
    ax.set_ylabel("top-1 accuracy (%)", color="C0")
    twin = ax.twinx()
    twin.plot(factors, [100 * r.dropped_fraction for r in results], "s--", color="C1")
    twin.set_ylabel("dropped token choices (%)", color="C1")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, plot_path, dpi=120)
