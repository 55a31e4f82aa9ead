"""Forward FLOPs of a model on one image, counted by torch's own `FlopCounterMode`.

FLOPs are multiply-adds x 2; papers that quote "GFLOPs" for ViTs usually quote multiply-adds, i.e. half of this.
For MoE layers the count is the work the dispatcher actually does: the padded capacity buffers for "index" and
"einsum" dispatch, the kept rows only for "grouped" (torch's counter has no formula for `torch._grouped_mm`; the one
here reads the packed rows' last offset, so it counts 2 * kept rows * K * N per expert matmul).

The model runs for real (CPU, batch 1, no grad). torch's counter does not know every fused attention kernel (the
CPU flash-attention op is not counted, while on the meta device attention is counted twice), so the attention
core (QK^T and AV: 4 * heads * N_q * N_k * head_dim) is added from forward hooks whenever no
scaled-dot-product op shows up in the count.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers import Attention


def _grouped_mm_flops(a, b, offs=None, *args, out_val=None, **kwargs) -> int:
    """FLOPs of `torch._grouped_mm(a [R, K], b [E, K, N], offs)`: only rows before offs[-1] are computed (the rest
    are left undefined). Other operand layouts (the backward's [K, R] x [R, N] per-group products) count every
    row."""
    if a.ndim == 2 and b.ndim == 3:
        rows = a.shape[0] if offs is None or offs.device.type == "meta" else int(offs[-1])
        return 2 * rows * a.shape[1] * b.shape[2]
    if a.ndim == 2 and b.ndim == 2:  # [K, R] x [R, N] -> [E, K, N]: each row is used once
        return 2 * a.shape[0] * a.shape[1] * b.shape[1]
    return 2 * a.numel() * b.shape[-1]


_grouped_mm_flops._get_raw = True  # FlopCounterMode passes the tensors themselves (offs values), not shapes
_CUSTOM_FLOPS = {torch.ops.aten._grouped_mm: _grouped_mm_flops} if hasattr(torch.ops.aten, "_grouped_mm") else {}


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        raise ValueError(f"cannot infer the input size of {type(model).__name__}; pass input_shape=(C, H, W)")
    return (embed.in_chans, *embed.img_size)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> int:
    """Total forward FLOPs for one example of `input_shape` (default: the model's own image size).

    Image-text models (two-tower, LIMoE) are counted on their image side (`encode_image`), per image.
    """
    shape = input_shape or _input_shape(model)
    attention_flops = []

    def record(module, inputs, output):
        batch, tokens, width = inputs[0].shape
        attention_flops.append(4 * tokens * tokens * width)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, Attention)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    forward = getattr(model, "encode_image", model)
    # Gradients are switched off per parameter rather than with no_grad: torch's module tracker (inside the
    # counter) fails on a parameter fed straight into a sub-module under no_grad (e.g. a MAP head's probe).
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    try:
        with counter:
            forward(torch.zeros(1, *shape, device=device))
    finally:
        model.train(was_training)
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for hook in hooks:
            hook.remove()
    counted_ops = {str(op) for op in counter.get_flop_counts().get("Global", {})}
    attention_counted = any("scaled_dot_product" in op for op in counted_ops)
    return counter.get_total_flops() + (0 if attention_counted else sum(attention_flops))
