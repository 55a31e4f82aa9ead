"""Fine-tune a candidate on the task and keep what selection and ensembling need: its validation and test logits.

Each candidate gets a fresh zero-initialised head (`replace_head`), the BiT-HyperRule schedule for the task's
training-set size (`hyperrule`, shrunk by `steps_scale`), no random flips on tasks whose labels a mirror changes,
and is then evaluated on the task's validation and test splits. The test accuracy is the ground truth t(m) of model
selection (Renggli et al. 2022); the validation logits feed the greedy ensemble (Mustafa et al. 2020), the test
logits its final report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class FinetuneSettings:
    steps_scale: float = 1.0  # multiplies the BiT-HyperRule schedule (500 steps below 20k examples)
    batch_size: int = 512  # BiT's batch (capped at the training-set size by `finetune`)
    lrs: tuple[float, ...] = (0.003,)  # one fine-tuning run per lr (Mustafa et al. sweep a few per model)
    mode: str = "finetune"  # finetune | linear
    max_eval_examples: int | None = None  # first N of val / test (None: all)
    eval_batch_size: int = 256
    data_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"fine-tuning learning rates must be positive numbers, got {self.lrs}")
        if not self.steps_scale > 0:
            raise ValueError(f"steps_scale must be > 0, got {self.steps_scale}")


@dataclass
class FinetunedCandidate:
    name: str
    lr: float
    val_logits: np.ndarray  # [N_val, C] float32
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    steps: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)

    @property
    def label(self) -> str:
        """The candidate name, with its lr when it is one of several runs of that candidate."""
        return f"{self.name}@lr={self.lr:g}"

    @property
    def val_accuracy(self) -> float:
        return float(np.mean(self.val_logits.argmax(1) == self.val_labels))

    @property
    def test_accuracy(self) -> float:
        return float(np.mean(self.test_logits.argmax(1) == self.test_labels))

    def summary(self) -> dict:
        from ..evaluate.calibration import negative_log_likelihood

        return {"candidate": self.name, "lr": self.lr, "steps": self.steps, "seconds": round(self.seconds, 2),
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "val_nll": negative_log_likelihood(self.val_logits, self.val_labels, "logits"),
                "test_nll": negative_log_likelihood(self.test_logits, self.test_labels, "logits")}


class TaskSplits:
    """The task's train / val / test splits, built once per input resolution and shared by the candidates."""

    def __init__(self, data: str, seed: int = 0):
        self.data, self.seed, self._cache = data, seed, {}

    def get(self, split: str, image_size: int):
        from ..data import build_dataset

        key = (split, int(image_size))
        if key not in self._cache:
            self._cache[key] = build_dataset(self.data, split=split, image_size=int(image_size), seed=self.seed)
        return self._cache[key]


def finetune_candidate(spec: str, name: str, splits: TaskSplits, settings: FinetuneSettings,
                       device: str = "cpu", progress: bool = True) -> list[FinetunedCandidate]:
    """Fine-tune one checkpoint once per lr in `settings.lrs`; val and test logits of every run."""
    from ..models.loading import load_model
    from ..transfer import model_image_size, predict_logits
    from ..transfer.finetune import finetune_new_head

    model, _ = load_model(spec)
    size = model_image_size(model)
    train_ds = splits.get("train", size)
    val_ds, test_ds = splits.get("val", size), splits.get("test", size)
    num_classes = int(train_ds.num_classes)
    runs = []
    for lr in settings.lrs:
        result = finetune_new_head(model, train_ds, None, num_classes=num_classes, task=splits.data, lr=float(lr),
                                   batch_size=settings.batch_size, steps_scale=settings.steps_scale,
                                   seed=settings.seed, mode=settings.mode, device=device, progress=progress,
                                   eval_batch_size=settings.eval_batch_size)
        kwargs = dict(batch_size=settings.eval_batch_size, device=device, progress=progress,
                      max_examples=settings.max_eval_examples)
        val_logits, val_labels = predict_logits(result.model, val_ds, **kwargs)
        test_logits, test_labels = predict_logits(result.model, test_ds, **kwargs)
        runs.append(FinetunedCandidate(name, float(lr), val_logits.numpy(), val_labels.numpy(), test_logits.numpy(),
                                       test_labels.numpy(), result.config.steps, result.seconds, result.history))
        del result
    return runs


def finetune_pool(specs: Sequence[str], names: Sequence[str], splits: TaskSplits, settings: FinetuneSettings,
                  device: str = "cpu", progress: bool = True,
                  done: dict[str, list[FinetunedCandidate]] | None = None) -> dict[str, list[FinetunedCandidate]]:
    """{name: its fine-tuning runs} for every candidate, reusing those already in `done`, with a progress bar."""
    from tqdm.auto import tqdm

    out = dict(done or {})
    todo = [(s, n) for s, n in zip(specs, names) if n not in out]
    for spec, name in tqdm(todo, desc="fine-tune candidates", disable=None if progress and todo else True):
        out[name] = finetune_candidate(spec, name, splits, settings, device, progress)
    return {n: out[n] for n in names}


def ground_truth_from_runs(runs: dict[str, list[FinetunedCandidate]]) -> dict[str, float]:
    """{name: test accuracy}: with several lrs, the run with the best validation accuracy (first on ties) counts,
    as a user with a small sweep would pick it."""
    out = {}
    for name, candidate_runs in runs.items():
        best = max(candidate_runs, key=lambda r: r.val_accuracy)
        out[name] = best.test_accuracy
    return out
