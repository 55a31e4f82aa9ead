"""Fine-tuning a pre-trained model on a new task (BiT-HyperRule recipe), or a linear probe on its frozen features.

    model = replace_head(pretrained, num_classes=10)           # a fresh zero head, as BiT and ViT
    config = hyperrule(len(train_ds), image_area=32 * 32)
    result = finetune(model, train_ds, val_ds, num_classes=10, config=config)          # all weights
    result = finetune(model, train_ds, val_ds, num_classes=10, config=config, mode="linear")  # head only
    logits, labels = predict_logits(result.model, test_ds)

"finetune": SGD with momentum over every weight, BiT's step schedule (`hyperrule.learning_rate`), BiT's
pre-processing and MixUp (`augment.py`), the MoE auxiliary loss of V-MoE / Soft MoE added to the task loss.
"linear": the backbone never changes; its features are extracted once and a logistic-regression head is fitted on
them (`linear_probe.py`), the L2 strength chosen on the validation split.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..train.batches import train_loader
from ..train.config import OptimConfig
from ..train.loop import NonFiniteLossError
from ..train.optim import build_optimizer, set_learning_rate
from ..utils.device import resolve_device
from .augment import mixup, mixup_cross_entropy, train_transform
from .features import extract_features, map_dataset, model_image_size
from .hyperrule import FinetuneConfig, default_flip, hyperrule, learning_rate, resize_for_crop
from .linear_probe import select_logistic_head
from .resolution import with_resolution

MODES = ("finetune", "linear")


@dataclass
class FinetuneResult:
    model: nn.Module  # in eval mode, at config.crop resolution, with a num_classes head
    history: list[dict]  # {"step", "split": "train" | "val", "loss", "accuracy"?, "lr"?} records (as metrics.jsonl)
    val_accuracy: float | None
    config: FinetuneConfig  # as run: crop / resize resolved, batch size as used
    mode: str = "finetune"
    num_classes: int = 0
    seconds: float = 0.0
    linear_l2: float | None = None  # linear mode: the L2 strength chosen on val
    linear_search: list[dict] = field(default_factory=list)  # linear mode: per-l2 train / val accuracy

    @property
    def img_size(self) -> int:
        return model_image_size(self.model)


def _head(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    if head is None or not hasattr(model, "num_features"):
        raise ValueError(f"{type(model).__name__} has no classifier head (model.head / model.num_features); "
                         f"fine-tuning and linear probes need a ViT, V-MoE, Soft MoE or Mixer classifier (the image "
                         f"embedding of an image-text model: sparsevision fewshot)")
    return head


def head_classes(model: nn.Module) -> int:
    """Outputs of the model's classifier head (0 for a head-less model)."""
    head = _head(model)
    return head.out_features if isinstance(head, nn.Linear) else 0


def replace_head(model: nn.Module, num_classes: int, zero_init: bool = True) -> nn.Module:
    """Give `model` (in place; returned) a new nn.Linear(num_features, num_classes) head on its device / dtype.

    zero_init: weights and bias zero, so fine-tuning starts from uniform predictions (BiT's `zero_head=True`, the
    ViT paper's zero-initialised head for transfer). Otherwise PyTorch's default Linear initialisation.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    old = _head(model)
    reference = next(iter(old.parameters()), None) if isinstance(old, nn.Linear) else None
    reference = reference if reference is not None else next(model.parameters())
    head = nn.Linear(model.num_features, num_classes).to(device=reference.device, dtype=reference.dtype)
    if zero_init:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    model.head = head
    model.num_classes = num_classes
    return model


def _resolve_device(device, model: nn.Module) -> torch.device:
    if device is None:
        return next(model.parameters()).device
    return resolve_device(device)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def predict_logits(model: nn.Module, dataset, batch_size: int = 256, device=None, progress: bool = True,
                   max_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 [N, C] on the CPU, labels int64 [N]) of the first `max_examples` items, in eval mode.

    Images are resized to the model's input resolution (BiT's evaluation pre-processing) when they differ.
    """
    return map_dataset(model, dataset, model, batch_size, max_examples, _resolve_device(device, model), progress,
                       "predict", model_image_size(model))


def _check_inputs(model: nn.Module, train_ds, val_ds, num_classes: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    outputs = head_classes(model)
    if outputs != num_classes:
        raise ValueError(f"the model's head has {outputs} outputs but the task has {num_classes} classes; give it "
                         f"a new head first: replace_head(model, {num_classes})")
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if ds is not None and getattr(ds, "num_classes", num_classes) != num_classes:
            raise ValueError(f"the {name} dataset has {ds.num_classes} classes but num_classes={num_classes}")
    if len(train_ds) == 0:
        raise ValueError("the training set is empty")


def _resolved(config: FinetuneConfig, model: nn.Module, num_train: int, note: bool = True) -> FinetuneConfig:
    crop = config.crop or model_image_size(model)
    resize = config.resize or resize_for_crop(crop)
    batch = config.batch_size
    if batch > num_train:
        # BiT's batch of 512 is larger than the smallest tasks (and the test ones): one step sees them all.
        batch = max(config.accum_steps, num_train // config.accum_steps * config.accum_steps)
        if note:  # a linear probe has no batches: nothing to tell
            print(f"note: batch_size {config.batch_size} > {num_train} training examples; using {batch}",
                  file=sys.stderr)
    return config.replace(crop=crop, resize=max(resize, crop), batch_size=batch)


def finetune(model: nn.Module, train_ds, val_ds=None, *, num_classes: int, config: FinetuneConfig,
             mode: str = "finetune", device=None, progress: bool = True, copy_model: bool = True,
             log_every: int | None = None, eval_batch_size: int = 256) -> FinetuneResult:
    """Fine-tune `model` (or probe it linearly) on `train_ds`; report accuracy on `val_ds`.

    The model's head must already have `num_classes` outputs (see `replace_head`). It is moved to
    `config.crop` resolution first (position embeddings resampled; an error for a Mixer), or kept at its own when
    crop is None. copy_model: work on a deep copy, so the pre-trained model can be fine-tuned again (ensembles,
    model selection); False trains it in place. Deterministic given config.seed (on one device / thread count).
    """
    _check_inputs(model, train_ds, val_ds, num_classes, mode)
    start = time.perf_counter()
    device = _resolve_device(device, model)
    config = _resolved(config, model, len(train_ds), note=mode != "linear")
    resized = with_resolution(model, config.crop)
    if resized is model and copy_model:
        resized = copy.deepcopy(model)
    model = resized.to(device)
    if mode == "linear":
        result = _linear(model, train_ds, val_ds, num_classes, config, device, progress, eval_batch_size)
    else:
        result = _finetune(model, train_ds, val_ds, num_classes, config, device, progress,
                           log_every or max(1, config.steps // 100), eval_batch_size)
    result.seconds = time.perf_counter() - start
    return result


def finetune_new_head(model: nn.Module, train_ds, val_ds=None, *, num_classes: int, task: str, lr: float,
                      batch_size: int = 512, steps_scale: float = 1.0, seed: int = 0, mode: str = "finetune",
                      device=None, progress: bool = True, eval_batch_size: int = 256,
                      **config_overrides) -> FinetuneResult:
    """`finetune` a copy of `model` under a new zero-initialised head of `num_classes` outputs, on the
    BiT-HyperRule schedule for `len(train_ds)` examples (no random flips on a task whose labels a mirror changes,
    `default_flip(task)`); `config_overrides` go to `hyperrule`. `model` itself is left as it is, so it can be
    fine-tuned again (learning-rate sweeps, model selection)."""
    fresh = replace_head(copy.deepcopy(model), num_classes, zero_init=True)
    config = hyperrule(len(train_ds), batch_size=batch_size, lr=lr, steps_scale=steps_scale,
                       flip=default_flip(task), seed=seed, **config_overrides)
    return finetune(fresh, train_ds, val_ds, num_classes=num_classes, config=config, mode=mode, device=device,
                    progress=progress, copy_model=False, eval_batch_size=eval_batch_size)


# ------------------------------------------------------------------------------------------------- linear probe

def _linear(model, train_ds, val_ds, num_classes, config, device, progress, batch_size) -> FinetuneResult:
    kwargs = dict(batch_size=batch_size, device=device, progress=progress, image_size=config.crop)
    train = extract_features(model, train_ds, desc="train features", **kwargs)
    val = extract_features(model, val_ds, desc="val features", **kwargs) if val_ds is not None else None
    head, search = select_logistic_head(train, val, num_classes, config.linear_l2_grid)
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    history = [{"step": i + 1, "split": "train", "loss": loss} for i, loss in enumerate(head.losses)]
    val_accuracy = None
    if val is not None:
        val_accuracy = next(r["val_accuracy"] for r in search if r["l2"] == head.l2)
        history.append({"step": len(head.losses), "split": "val", "accuracy": val_accuracy})
    return FinetuneResult(model.eval(), history, val_accuracy, config, "linear", num_classes, linear_l2=head.l2,
                          linear_search=search)


# ---------------------------------------------------------------------------------------------------- fine-tune

def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    # One generator per (seed, step, purpose): the augmentation of a step does not depend on earlier steps.
    state = np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _mixup_lambda(config: FinetuneConfig, step: int) -> float:
    if config.mixup_alpha <= 0:
        return 1.0
    return float(np.random.default_rng([config.seed, step, 0xB1]).beta(config.mixup_alpha, config.mixup_alpha))


@torch.no_grad()
def _val_metrics(model, val_ds, batch_size, device) -> dict:
    logits, labels = predict_logits(model, val_ds, batch_size=batch_size, device=device, progress=False)
    return {"loss": float(nn.functional.cross_entropy(logits, labels)),
            "accuracy": float((logits.argmax(1) == labels).float().mean())}


def _finetune(model, train_ds, val_ds, num_classes, config: FinetuneConfig, device, progress, log_every,
              batch_size) -> FinetuneResult:
    torch.manual_seed(config.seed)  # dropout and the MoE routers' noise
    for param in model.parameters():
        param.requires_grad_(True)
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=config.lr, momentum=config.momentum,
                                                   weight_decay=config.weight_decay))
    autocast_dtype = _autocast_dtype(config.precision, device)
    batches = iter(train_loader(train_ds, config.batch_size, config.seed, 0))
    history: list[dict] = []
    window, window_steps = 0.0, 0
    model.train()
    bar = tqdm(total=config.steps, desc="finetune", unit="step", disable=None if progress else True, dynamic_ncols=True)
    try:
        for step in range(config.steps):
            lr = learning_rate(step, config)
            set_learning_rate(optimizer, lr)
            images, labels = next(batches)[:2]
            images = train_transform(images, config.resize, config.crop, _step_generator(config.seed, step, 0),
                                     flip=config.flip)
            lam = _mixup_lambda(config, step)
            if lam < 1.0:
                images, labels_a, labels_b = mixup(images, labels, lam, _step_generator(config.seed, step, 1))
            else:
                labels_a = labels_b = labels
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for x, ya, yb in zip(*(t.chunk(config.accum_steps) for t in (images, labels_a, labels_b))):
                x, ya, yb = x.to(device), ya.to(device), yb.to(device)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    logits, aux = model(x, return_aux=True)
                loss = mixup_cross_entropy(logits, ya, yb, lam) + config.aux_loss_weight * aux["aux_loss"].float()
                (loss / config.accum_steps).backward()
                step_loss += float(loss.detach()) / config.accum_steps
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(f"fine-tuning loss is {step_loss} at step {step + 1} (lr {lr:.2e}); "
                                         f"try a lower lr, longer warmup_steps or grad_clip_norm=1")
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm or float("inf"))
            optimizer.step()
            window, window_steps = window + step_loss, window_steps + 1
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done == config.steps:
                history.append({"step": done, "split": "train", "loss": window / window_steps, "lr": lr,
                                "mixup_lambda": lam})
                bar.set_postfix(loss=f"{window / window_steps:.4f}", lr=f"{lr:.1e}")
                window, window_steps = 0.0, 0
            if val_ds is not None and config.eval_every and done % config.eval_every == 0 and done < config.steps:
                history.append({"step": done, "split": "val", **_val_metrics(model, val_ds, batch_size, device)})
                model.train()
    finally:
        bar.close()
    model.eval()
    val_accuracy = None
    if val_ds is not None:
        metrics = _val_metrics(model, val_ds, batch_size, device)
        history.append({"step": config.steps, "split": "val", **metrics})
        val_accuracy = metrics["accuracy"]
    return FinetuneResult(model, history, val_accuracy, config, "finetune", num_classes)
