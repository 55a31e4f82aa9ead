"""Linear probe on frozen features: multinomial logistic regression fitted full-batch with L-BFGS.

Why L-BFGS on the cached features rather than SGD with the fine-tuning schedule: the backbone is frozen, so the
features are computed once and the problem is convex; full-batch L-BFGS reaches its optimum in a few hundred cheap
iterations with no learning rate to tune and no randomness, which makes the probe deterministic and comparable
across models (the "linear evaluation" of the BiT / ViT / Kornblith et al. transfer studies is the same convex
problem). The objective is

    mean_i CE(W f_i + b, y_i) + l2 / 2 * ||W||^2          (the bias is not penalised)

i.e. scikit-learn's LogisticRegression(C = 1 / (n * l2)) with the multinomial loss; l2 is chosen on the
validation split from a small grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SINGLE_THREAD_BELOW = 20_000_000  # multiply-adds per objective evaluation


@dataclass
class LinearHead:
    weight: torch.Tensor  # [C, D] float32
    bias: torch.Tensor  # [C] float32
    l2: float
    loss: float  # final value of the objective
    losses: list[float]  # objective after each L-BFGS iteration


def fit_logistic_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 0.0,
                      max_iter: int = 200, init: tuple[torch.Tensor, torch.Tensor] | None = None) -> LinearHead:
    """Minimise the objective above in float64 with L-BFGS (strong-Wolfe line search) from zeros or `init`."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("cannot fit a linear head on zero examples")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    x = features.detach().double().cpu()
    y = labels.detach().long().cpu()
    if not torch.isfinite(x).all():
        raise ValueError("the features contain NaN or inf; the backbone's outputs are not finite")
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    if init is not None:
        weight.copy_(init[0])
        bias.copy_(init[1])
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe")
    losses: list[float] = []

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    def closure() -> torch.Tensor:
        loss = objective()
        losses.append(float(loss.detach()))
        return loss

    # A small problem is a long chain of tiny ops, where thread hand-offs cost more than they save (10-60x slower
    # with 2 threads on a busy 2-core machine); a large one keeps every thread.
    threads = torch.get_num_threads()
    if x.numel() * num_classes < _SINGLE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        optimizer.step(closure)
        final = float(objective().detach())
    finally:
        torch.set_num_threads(threads)
    if not math.isfinite(final):
        raise FloatingPointError(f"the linear probe's loss is {final} (l2={l2}); the features may be too large")
    return LinearHead(weight.detach().float(), bias.detach().float(), float(l2), final, losses)


def accuracy_of(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    logits = features.float() @ head.weight.T + head.bias
    return float((logits.argmax(1) == labels).float().mean())


def select_logistic_head(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
                         num_classes: int, l2_grid: tuple[float, ...],
                         max_iter: int = 200) -> tuple[LinearHead, list[dict]]:
    """Fit one head per l2 (strongest first, each warm-started from the previous) and keep the best on `val`
    (ties go to the stronger l2). Without `val` nothing can choose, so only the grid's middle value (the least
    extreme guess; 1e-3 for the default grid) is fitted. Returns (head, per-l2 records)."""
    grid = sorted(set(float(v) for v in l2_grid), reverse=True)
    if not grid:
        raise ValueError("l2_grid is empty")
    if val is None:
        grid = [grid[len(grid) // 2]]
    best, best_acc, records, init = None, -1.0, [], None
    for l2 in grid:
        head = fit_logistic_head(*train, num_classes, l2=l2, max_iter=max_iter, init=init)
        init = (head.weight.double(), head.bias.double())
        record = {"l2": l2, "train_loss": head.loss, "train_accuracy": accuracy_of(head, *train)}
        if val is not None:
            record["val_accuracy"] = accuracy_of(head, *val)
            if record["val_accuracy"] > best_acc:
                best, best_acc = head, record["val_accuracy"]
        elif best is None:
            best = head
        records.append(record)
    return best, records
