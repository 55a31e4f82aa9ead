"""What the importers share: the load report with its named errors, and fitting a position table to a model."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers.pos_embed import resample_grid


@dataclass
class LoadReport:
    """What an import did. `missing`: our parameter <- the source name it needed; `unexpected`: source names no
    parameter used; `mismatched`: (source name, source shape, expected shape); `resampled`: position tables moved
    to a new grid."""

    dialect: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = 30) -> str:
        def listing(title, items):
            items = list(items)
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {title} ({len(items)}):\n" + "\n".join(f"    {x}" for x in items[:limit]) + more

        parts = []
        if self.missing:
            parts.append(listing("missing", self.missing))
        if self.unexpected:
            parts.append(listing("unexpected", self.unexpected))
        if self.mismatched:
            parts.append(listing("shape mismatch", (f"{k}: checkpoint {tuple(a)}, model expects {tuple(b)}"
                                                    for k, a, b in self.mismatched)))
        return "\n".join(parts)


def _is_square(n: int) -> bool:
    return n >= 1 and math.isqrt(n) ** 2 == n


def fit_pos_embed(model: nn.Module, table: torch.Tensor, name: str, report: LoadReport) -> torch.Tensor | None:
    """Our [1, prefix + H*W, D] table from a checkpoint's [1, S, D] one, or None (reported) if it cannot fit."""
    prefix, (gh, gw) = model.num_prefix_tokens, model.patch_embed.grid_size
    expected = tuple(model.pos_embed.shape)
    if table.ndim != 3 or table.shape[0] != 1 or table.shape[2] != expected[2]:
        report.mismatched.append((name, tuple(table.shape), expected))
        return None
    s = table.shape[1]
    if s == prefix + gh * gw:
        return table.clone()
    if prefix == 1 and _is_square(s - 1) and not _is_square(s):
        cls_row, grid = table[0, :1], table[0, 1:]
    elif _is_square(s):
        # big_vision adds the position table before prepending the class token: the class token gets none.
        cls_row, grid = table.new_zeros(prefix, table.shape[2]), table[0]
    else:
        report.mismatched.append((name, tuple(table.shape), expected))
        return None
    if grid.shape[0] != gh * gw:
        old = math.isqrt(grid.shape[0])
        grid = resample_grid(grid, (gh, gw))
        report.resampled.append(f"{name}: {old}x{old} -> {gh}x{gw}")
    return torch.cat([cls_row, grid])[None]


@torch.no_grad()
def apply_state(model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, strict: bool) -> LoadReport:
    """Copy `state` into `model`; with `strict`, first raise ValueError naming every problem (nothing copied)."""
    if strict and not report.ok:
        raise ValueError(f"the {report.dialect} checkpoint does not fit {type(model).__name__}:\n"
                         f"{report.problems()}\n(strict=False, or --non-strict on the command line, copies what fits)")
    own = model.state_dict()
    for name, tensor in state.items():
        own[name].copy_(tensor)
    return report
