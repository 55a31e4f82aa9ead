"""Classification losses: softmax and sigmoid cross-entropy with label smoothing, as big_vision trains ViTs.

Label smoothing follows Szegedy et al. 2016 (Inception-v3, Sec. 7) and optax's `smooth_labels`: the target is
`(1 - eps) * onehot + eps / K` over all K classes, the true one included (torch's `label_smoothing` does the same).

`sigmoid_xent` is big_vision's `utils.sigmoid_xent`: K independent binary cross-entropies, *summed* over classes
and averaged over the batch (the ViT i21k / MLP-Mixer recipes train with it). `softmax_xent` is the usual
negative log-likelihood averaged over the batch.

Both take integer labels [B] or soft targets [B, K] and compute in float32 when the logits arrive in half precision
under autocast: log-sum-exp in bf16 loses the small differences that the loss is made of.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("softmax", "sigmoid")


def _check(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if labels.ndim == 1:
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} and logits {tuple(logits.shape)} differ in batch size")
        if labels.dtype.is_floating_point:
            raise ValueError(f"integer class labels expected for a [batch] label tensor, got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            bad = labels[(labels < 0) | (labels >= logits.shape[1])][0].item()
            raise ValueError(f"label {bad} is out of range for {logits.shape[1]} classes")
    elif labels.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}")


def smooth_labels(labels: torch.Tensor, num_classes: int, label_smoothing: float = 0.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer labels [B] or soft targets [B, K] -> targets (1 - eps) * y + eps / K of `dtype`."""
    targets = (F.one_hot(labels, num_classes) if labels.ndim == 1 else labels).to(dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def _float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def softmax_xent(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """mean_b [ -sum_k t_bk log softmax(z_b)_k ] with smoothed targets t."""
    _check(logits, labels, label_smoothing)
    logits = _float32(logits)
    targets = smooth_labels(labels, logits.shape[1], label_smoothing, logits.dtype)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def sigmoid_xent(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """mean_b [ -sum_k t_bk log sigmoid(z_bk) + (1 - t_bk) log sigmoid(-z_bk) ] (big_vision `sigmoid_xent`)."""
    _check(logits, labels, label_smoothing)
    logits = _float32(logits)
    targets = smooth_labels(labels, logits.shape[1], label_smoothing, logits.dtype)
    # The *_with_logits form is the stable log-sigmoid big_vision uses (no log(0) for large |z|).
    nll = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return nll.sum(dim=-1).mean()


def classification_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Dispatch on `kind` ("softmax" or "sigmoid")."""
    if kind == "softmax":
        return softmax_xent(logits, labels, label_smoothing)
    if kind == "sigmoid":
        return sigmoid_xent(logits, labels, label_smoothing)
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy; soft targets count their argmax as the label."""
    if labels.ndim == 2:
        labels = labels.argmax(dim=-1)
    return (logits.argmax(dim=-1) == labels).float().mean()
