"""Per-expert buffer capacity, matching `vmoe.moe.compute_capacity` (Riquelme et al. 2021, Sec. 2.2).

Every router calls this one function. Order of operations follows the official code exactly:
1. `num_tokens * capacity_factor / num_experts`, then `ceil` or Python `round` (banker's rounding: round(2.5) == 2);
2. error if that is < 1 (checked *before* step 3, so a tiny factor fails even when `multiple_of` would pad it);
3. pad up to a multiple of `multiple_of` (None or 0 = no padding; the official default 4 avoids TPU padding).
The top-k router passes `num_tokens = group_size * k` (each token makes k choices); expert-choice passes
`group_size`; Soft MoE derives its slots per expert with `("round", multiple_of=1)`.
"""
from __future__ import annotations

import math
from typing import Literal

CeilOrRound = Literal["ceil", "round"]


def compute_capacity(
    num_tokens: int,
    num_experts: int,
    capacity_factor: float,
    ceil_or_round: CeilOrRound = "ceil",
    multiple_of: int | None = 4,
) -> int:
    """Returns the capacity per expert needed to distribute `num_tokens` among `num_experts`."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got num_experts={num_experts}")
    if multiple_of is not None and multiple_of < 0:
        raise ValueError(f"multiple_of must be None or >= 0, got multiple_of={multiple_of}")
    target = num_tokens * capacity_factor / num_experts
    if ceil_or_round == "ceil":
        capacity = int(math.ceil(target))
    elif ceil_or_round == "round":
        capacity = int(round(target))
    else:
        raise ValueError(f"ceil_or_round must be 'ceil' or 'round', got ceil_or_round={ceil_or_round!r}")
    if capacity < 1:
        raise ValueError(
            f"num_tokens={num_tokens}, num_experts={num_experts} and capacity_factor={capacity_factor} give "
            f"capacity={capacity}, but the capacity must be >= 1 (raise capacity_factor or the group size)"
        )
    if multiple_of:
        capacity += (-capacity) % multiple_of
    return capacity
