"""Turn what a user points at into a model: a run or checkpoint directory, a safetensors file written by training
or `sparsevision convert`, or a registered name plus a weights file. Every sub-command that takes `--model` uses this.
"""
from __future__ import annotations


def load_model(spec: str, weights: str | None = None, overrides: dict | None = None):
    """(model in eval mode, name) from a run / checkpoint directory, a safetensors file, or a registered name."""
    model, name, _ = load_model_and_overrides(spec, weights, overrides)
    return model, name


def load_model_and_overrides(spec: str, weights: str | None = None, overrides: dict | None = None):
    """As `load_model`, plus the constructor overrides the model was built with (to rebuild it, e.g. at another
    resolution or with another head)."""
    import json
    import os

    from safetensors import safe_open

    from .registry import check_model_name, create_model
    from ..train.checkpoint import load_checkpoint_model, load_model_weights

    if os.path.exists(spec):
        if weights:
            raise ValueError("--weights goes with a registered model name, not with a path in --model")
        try:
            model, config = load_checkpoint_model(spec)
            return model.eval(), config.model.name, dict(config.model.overrides)
        except FileNotFoundError:
            if not (os.path.isfile(spec) and spec.endswith(".safetensors")):
                raise
        # A file written by `sparsevision convert` names its model in the metadata.
        try:
            with safe_open(spec, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for a corrupt header
            raise ValueError(f"{spec} is not a readable safetensors file: {err}") from err
        if "model" not in meta:
            raise FileNotFoundError(f"{spec} has no config.json beside it and no model name in its metadata; pass "
                                    f"--model NAME --weights {spec}")
        name, overrides = meta["model"], {**json.loads(meta.get("overrides", "{}")), **(overrides or {})}
        weights = spec
    else:
        if os.sep in spec or spec.endswith((".safetensors", ".json")):
            raise FileNotFoundError(f"{spec} does not exist")
        try:
            check_model_name(spec)
        except ValueError as err:  # a missing run directory looks like a bare name too: say both
            raise ValueError(f"no file or directory {spec!r}, and {err}") from None
        name = spec
        if not weights:
            raise FileNotFoundError(f"{spec!r} is not a path; for a registered model name pass --weights FILE")
    overrides = dict(overrides or {})
    try:
        model = create_model(name, **overrides)
    except TypeError as err:  # a misspelt --set key is a bad input, not a crash
        raise ValueError(f"{err} (constructor overrides: {overrides})") from err
    load_model_weights(model, weights)
    return model.eval(), name, overrides
