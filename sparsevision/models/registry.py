"""Model registry: `create_model(name, **overrides)` and `list_models()`, in the manner of timm.

Each family file registers one builder per named size; a builder is a plain function whose keyword arguments are
the model's constructor arguments, so any of them can be overridden by name.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def check_model_name(name: str) -> None:
    """ValueError listing the close matches when `name` is not registered."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (sparsevision.list_models() lists all {len(_MODELS)})")


# Sizes the families share. A bad value otherwise fails deep inside a constructor ("'>' not supported between
# instances of 'str' and 'int'") or, for depth=-1 or num_classes=-1, builds a model without blocks or head.
_AT_LEAST = {"num_classes": 0, "depth": 1, "width": 1, "num_heads": 1, "mlp_dim": 1, "in_chans": 1,
             "num_experts": 1}


def _check_sizes(name: str, overrides: dict) -> None:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key, low in _AT_LEAST.items():
        if key in overrides and not (is_int(overrides[key]) and overrides[key] >= low):
            raise ValueError(f"bad arguments for model {name!r}: {key} must be an int >= {low}, got {overrides[key]!r}")
    for key in ("img_size", "patch_size"):  # an int or an (H, W) pair
        value = overrides.get(key)
        sides = list(value) if isinstance(value, (list, tuple)) else [value]
        if value is not None and not (len(sides) in (1, 2) and all(is_int(v) and v >= 1 for v in sides)):
            raise ValueError(f"bad arguments for model {name!r}: {key} must be a positive int or an (H, W) pair of "
                             f"them, got {value!r}")


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` are constructor arguments (e.g. num_classes=10, img_size=32)."""
    check_model_name(name)
    _check_sizes(name, overrides)
    try:
        return _MODELS[name](**overrides)
    except TypeError as err:
        raise TypeError(f"bad arguments for model {name!r}: {err}") from err
