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


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; `overrides` are constructor arguments (e.g. num_classes=10, img_size=32)."""
    check_model_name(name)
    try:
        return _MODELS[name](**overrides)
    except TypeError as err:
        raise TypeError(f"bad arguments for model {name!r}: {err}") from err
