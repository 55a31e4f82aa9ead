"""Optimisers (AdamW, SGD with momentum) and big_vision's learning-rate schedules.

The schedule is a pure function of the step (`learning_rate(step, optim, total_steps)`), set on the optimiser
before every update, so a resumed run needs no scheduler state: the step alone gives the same value.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def learning_rate(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate of update number `step` (0 for the first update), as big_vision's
    `create_learning_rate_schedule`:

        progress = clip((step - warmup) / (total - warmup), 0, 1)
        cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2
        linear:   min_lr + (lr - min_lr) * (1 - progress)
        constant: lr
        step:     lr * step_factor ** (number of step_boundaries <= step)   (big_vision's "stair")
        then, during warmup, times min(1, step / warmup).

    As in big_vision the warmup ramp starts at 0 for the first update. With min_lr=0 cosine and linear are
    exactly big_vision's (`linear_end` is min_lr); big_vision's cosine has no floor, min_lr adds one.
    """
    base, warmup = optim.lr, optim.warmup_steps
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, progress))
    if optim.schedule == "cosine":
        lr = optim.min_lr + (base - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif optim.schedule == "linear":
        lr = optim.min_lr + (base - optim.min_lr) * (1.0 - progress)
    elif optim.schedule == "constant":
        lr = base
    elif optim.schedule == "step":
        lr = base * optim.step_factor ** sum(1 for b in optim.step_boundaries if b <= step)
    else:
        raise ValueError(f"unknown schedule {optim.schedule!r}; expected cosine, linear, constant or step")
    if warmup:
        lr *= min(1.0, step / warmup)
    return lr


_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)


def decay_mask(model: nn.Module) -> dict[str, bool]:
    """{parameter name: whether weight decay applies}.

    Only kernels are decayed, as big_vision's default `wd_mults = [(".*/kernel$", 1.0)]`: weights of linear and
    convolution layers and batched expert weights (`*_weight` with >= 2 dims). Biases, norm scales, embedding
    tables, position embeddings, class tokens, PatchMerger queries and scalars (temperatures) are not decayed.
    """
    mask = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            kernel = name == "weight" or name.endswith("_weight")
            mask[full] = kernel and param.ndim >= 2 and not isinstance(module, _NO_DECAY_MODULES)
    return mask


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters, in two groups: decayed kernels and everything else."""
    mask = decay_mask(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if mask[name] else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    raise ValueError(f"unknown optimizer {optim.name!r}; expected adamw or sgd")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
