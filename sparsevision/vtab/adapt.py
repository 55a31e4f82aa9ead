"""Adapting a pre-trained model to one task under the VTAB-1k protocol, three ways.

Every mode makes its choices on train800 / val200, then fits once more on train800val200 (the 1000 examples) and
reports accuracy on test:

* "fewshot" (fastest): frozen pre-logits features and the closed-form ridge classifier of the V-MoE / big_vision
  few-shot evaluator (`sparsevision.evaluate.fewshot`: standardised features, +-1 targets, a bias feature). The
  L2 strength is the value of `DEFAULT_L2_GRID` with the best val200 accuracy when fitted on train800 (ties go to
  the larger L2); the final classifier is refitted with it on all 1000 examples.
* "linear": a logistic-regression head on frozen features (`transfer.finetune(mode="linear")`); its L2 strength is
  chosen on val200 from train800, then the head is refitted on the 1000 with that L2 alone.
* "finetune": all weights, BiT-HyperRule (`transfer.hyperrule`: SGD, batch 512, 500 steps for 1000 examples, lr
  0.003), a fresh copy of the pre-trained model with a zero-initialised head for every run. With one learning rate
  (the default) nothing is chosen, so only the final run happens; with several (`lrs`), each is tried on
  train800 / val200 first and the best val200 accuracy picks the one for the final run (ties: the earliest given),
  as the ViT paper chose its VTAB setting on the 200-example validation sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluate.fewshot import DEFAULT_L2_GRID, fit_linear_probe, ridge_l2_search
from ..transfer.features import extract_features
from .data import TaskData

MODES = ("finetune", "linear", "fewshot")
DEFAULT_LR = 0.003  # BiT-HyperRule


@dataclass(frozen=True)
class AdaptSettings:
    mode: str = "fewshot"
    steps_scale: float = 1.0  # finetune: shrink the HyperRule schedule (quick runs); 1 is the protocol
    lrs: tuple[float, ...] = (DEFAULT_LR,)  # finetune: several = a sweep judged on val200
    batch_size: int = 512  # finetune: HyperRule's batch (capped at the training-set size by the fine-tuner)
    seed: int = 0  # finetune: initialisation of the run's randomness (data order, augmentation, MixUp)
    l2_grid: tuple[float, ...] = tuple(DEFAULT_L2_GRID)  # fewshot
    eval_batch_size: int = 128

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if not self.steps_scale > 0:
            raise ValueError(f"steps_scale must be > 0, got {self.steps_scale}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"learning rates must be positive, got {self.lrs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")

    def relevant(self) -> dict:
        """The settings this mode uses, for the report."""
        if self.mode == "fewshot":
            return {"mode": self.mode, "l2_grid": list(self.l2_grid)}
        out = {"mode": self.mode, "steps_scale": self.steps_scale, "batch_size": self.batch_size, "seed": self.seed}
        return {**out, "lrs": list(self.lrs)} if self.mode == "finetune" else out


@dataclass
class Adapted:
    test_accuracy: float
    val_accuracy: float | None  # of the chosen setting, fitted on train800 (None when nothing was chosen)
    choice: dict = field(default_factory=dict)  # what val200 decided, e.g. {"l2": 1024.0} or {"lr": 0.01}
    details: dict = field(default_factory=dict)


def _numpy(tensors) -> list[np.ndarray]:
    return [t.numpy().astype(np.float64) if t.is_floating_point() else t.numpy() for t in tensors]


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def ridge_adapt(model, data: TaskData, settings: AdaptSettings, device=None, progress: bool = False) -> Adapted:
    kw = dict(batch_size=settings.eval_batch_size, device=device, progress=progress)
    x_train, y_train = _numpy(extract_features(model, data.train800, desc="train800 features", **kw))
    x_val, y_val = _numpy(extract_features(model, data.val200, desc="val200 features", **kw))
    x_test, y_test = _numpy(extract_features(model, data.test, desc="test features", **kw))
    c = data.num_classes
    l2, val_accs = ridge_l2_search(x_train, y_train, x_val, y_val, c, settings.l2_grid)
    best = max(val_accs)
    w, b = fit_linear_probe(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), c, l2)
    return Adapted(_accuracy(x_test @ w + b, y_test), best, {"l2": float(l2)},
                   {"feature_dim": int(x_train.shape[1])})


def _run(model, train, val, task_name: str, num_classes: int, settings: AdaptSettings, lr: float, device,
         progress: bool, **config_overrides):
    from ..transfer.finetune import finetune_new_head

    return finetune_new_head(model, train, val, num_classes=num_classes, task=task_name, lr=lr,
                             batch_size=settings.batch_size, steps_scale=settings.steps_scale, seed=settings.seed,
                             mode=settings.mode, device=device, progress=progress,
                             eval_batch_size=settings.eval_batch_size, **config_overrides)


def _test_accuracy(result, data: TaskData, settings: AdaptSettings, device, progress: bool) -> float:
    from ..transfer.finetune import predict_logits

    logits, labels = predict_logits(result.model, data.test, batch_size=settings.eval_batch_size, device=device,
                                    progress=progress)
    return int((logits.argmax(1) == labels).sum()) / len(labels)


def trained_adapt(model, data: TaskData, settings: AdaptSettings, task_name: str, device=None,
                  progress: bool = False) -> Adapted:
    """"finetune" and "linear" modes through `sparsevision.transfer.finetune`."""
    c = data.num_classes
    val_accuracy, choice, overrides = None, {}, {}
    lr = settings.lrs[0]
    if settings.mode == "linear":
        # Choose the head's L2 on val200 from train800, then refit on the 1000 with that value alone.
        chosen = _run(model, data.train800, data.val200, task_name, c, settings, lr, device, progress)
        val_accuracy, choice = chosen.val_accuracy, {"l2": chosen.linear_l2}
        overrides = {"linear_l2_grid": (chosen.linear_l2,)}
    elif len(settings.lrs) > 1:
        sweep = []
        for candidate in settings.lrs:
            run = _run(model, data.train800, data.val200, task_name, c, settings, candidate, device, progress)
            sweep.append((candidate, run.val_accuracy))
            del run
        best = max(acc for _, acc in sweep)
        lr, val_accuracy = next((cand, acc) for cand, acc in sweep if acc == best)
        choice = {"lr": lr, "val_accuracy_per_lr": {str(cand): acc for cand, acc in sweep}}
    final = _run(model, data.train800val200, None, task_name, c, settings, lr, device, progress, **overrides)
    details = {"steps": final.config.steps, "batch_size": final.config.batch_size, "lr": lr,
               "resolution": final.config.crop, "seconds": round(final.seconds, 3)}
    accuracy = _test_accuracy(final, data, settings, device, progress)
    del final
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Adapted(accuracy, val_accuracy, choice, details)


def adapt(model, data: TaskData, settings: AdaptSettings, task_name: str, device=None,
          progress: bool = False) -> Adapted:
    if settings.mode == "fewshot":
        return ridge_adapt(model, data, settings, device, progress)
    return trained_adapt(model, data, settings, task_name, device, progress)
