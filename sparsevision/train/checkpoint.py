"""Checkpoints that never lose work, and model weights in safetensors that others can load.

A training checkpoint is a directory `<run>/checkpoints/step_00000100/` holding
    model.safetensors  the model's state_dict (reusable alone: `load_model_weights`, `load_checkpoint_model`)
    state.pt           optimiser / grad-scaler state, RNG states, step and data position (torch.save, tensors only)
    config.json        the run's resolved config, so the directory rebuilds its model on its own.
It is written into a hidden temporary directory next to its final place and renamed into place in one
`os.replace`, so a crash mid-write leaves the previous checkpoint untouched and never a half-written one under a
`step_*` name. Older checkpoints are deleted only after the new one is in place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and `os.replace`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cpu_state_dict(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tensors sharing storage (tied weights) are cloned, which safetensors requires."""
    out, seen = {}, set()
    state = model if isinstance(model, dict) else model.state_dict()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        out[name] = tensor
    return out


def save_model_weights(model: nn.Module | dict[str, torch.Tensor], path: str | os.PathLike,
                       metadata: dict[str, str] | None = None) -> None:
    """The model's state_dict (or a state_dict itself, e.g. the gathered `moe.parallel.full_state_dict` of an
    expert-parallel job) as safetensors, written atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(_cpu_state_dict(model), str(tmp), metadata=metadata or {"format": "pt"})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_model_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a safetensors state_dict into `model`; returns (missing, unexpected) key lists.

    Shape mismatches are always an error; missing or unexpected keys are errors when `strict`. Each error lists
    the offending keys (with both shapes for mismatches) so a wrong model or file is recognisable at once.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    expected = _full_shapes(model)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    problems = []
    if mismatched:
        details = [f"{k} (file {shapes[k]}, model {expected[k]})" for k in mismatched]
        problems.append("shape mismatch: " + _short(details))
    if strict and missing:
        problems.append(f"missing from the file: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"not in the model: {_short(unexpected)}")
    if problems:
        raise ValueError(f"weights in {path} do not match {type(model).__name__}: " + "; ".join(problems))
    state = load_file(str(path), device="cpu")
    from ..moe.parallel import load_full_state_dict_

    load_full_state_dict_(model, state, strict=False)  # keeps this rank's experts of an expert-parallel model
    return missing, unexpected


def _full_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """state_dict shapes as one process holds them: an expert-parallel shard counts as its full [E, ...] tensor."""
    from ..moe.parallel import EXPERT_PARAMS, ExpertParallelExperts

    shards = {name: m for name, m in model.named_modules() if isinstance(m, ExpertParallelExperts)}
    shapes = {}
    for key, value in model.state_dict().items():
        owner, _, attr = key.rpartition(".")
        shape = tuple(value.shape)
        if owner in shards and attr in EXPERT_PARAMS:
            shape = (shards[owner].num_global_experts, *shape[1:])
        shapes[key] = shape
    return shapes


# ------------------------------------------------------------------------------------------ training checkpoints

def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, directory)] of the complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / MODEL_FILE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where checkpoint `step` of a run lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}"


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module | dict[str, torch.Tensor], state: dict,
                    config: dict, keep: int = 1) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints. `model` is the model
    or its (full, one-process) state_dict."""
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model_weights(model, tmp / MODEL_FILE)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        atomic_write_bytes(tmp / CONFIG_FILE, json.dumps(config, indent=2).encode())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved twice: move the old copy aside first, remove it once replaced
            old = root / f".old-step_{step:08d}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_training_state(checkpoint_dir: str | os.PathLike) -> dict:
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------- for other modules

def _find_config(start: Path) -> Path:
    for directory in [start, *start.parents][:4]:
        if (directory / CONFIG_FILE).is_file():
            return directory / CONFIG_FILE
    raise FileNotFoundError(f"no {CONFIG_FILE} next to or above {start}; cannot tell which model to build")


def resolve_weights(path: str | os.PathLike) -> Path:
    """A run directory, a checkpoint directory or a .safetensors file -> the weights file to load."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is not None:
            return latest / MODEL_FILE
        raise FileNotFoundError(f"{path} holds no checkpoint (expected {CHECKPOINT_DIR}/step_*/{MODEL_FILE})")
    raise FileNotFoundError(f"no run directory, checkpoint or weights file at {path}")


def load_checkpoint_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, TrainConfig) from a run directory (its newest checkpoint), a checkpoint directory or a
    model.safetensors file, rebuilt from the config.json saved with it."""
    from ..models import create_model
    from .config import load_config

    weights = resolve_weights(path)
    config = load_config(_find_config(weights.parent))
    model = create_model(config.model.name, **config.model.overrides)
    load_model_weights(model, weights, strict=True)
    return model.to(device).eval(), config
