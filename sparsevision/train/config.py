"""Training configuration: small frozen dataclasses, their JSON form, and `--set a.b=value` overrides.

A run is fully described by one `TrainConfig`; `config.json` in the run directory is `config_to_dict` of it, and
`config_from_dict` reads it back (unknown keys are errors, so a typo in a hand-edited file cannot be ignored).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vit_tiny_test"
    # Constructor arguments for `create_model(name, **overrides)`. The loop fills in `num_classes` and `img_size`
    # from the data when absent, and config.json records the filled-in values so the model can be rebuilt alone.
    overrides: dict = field(default_factory=dict)
    # Weights to start from instead of a random init (a run or checkpoint directory, or a .safetensors file from
    # training or `sparsevision convert`, e.g. an upcycled V-MoE); they must fit the model exactly. Ignored on resume.
    init_from: str = ""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    image_size: int = 32
    batch_size: int = 64  # examples per optimiser step, split into `accum_steps` micro-batches
    eval_batch_size: int = 256
    num_workers: int = 0
    seed: int = 0  # seed of the dataset itself (its splits / generated examples); the order comes from train seed
    augment: str = "none"  # none | crop | crop_flip (pad-4 random crop, CIFAR-style; never flip digits)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    # PyTorch convention (decoupled for AdamW as in Loshchilov & Hutter: p -= lr_t * weight_decay * p; L2 for SGD).
    # big_vision's `wd` is not multiplied by the base lr, so its wd=1e-4 at lr=1e-3 is weight_decay=0.1 here.
    weight_decay: float = 0.1
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant | step
    min_lr: float = 0.0  # cosine / linear decay end here (big_vision's linear `end`)
    step_boundaries: tuple[int, ...] = ()  # schedule="step": lr *= step_factor from each of these steps on
    step_factor: float = 0.1
    grad_clip_norm: float = 1.0  # global-norm clipping; 0 turns it off (the norm is still logged)


@dataclass(frozen=True)
class LossConfig:
    kind: str = "softmax"  # softmax | sigmoid
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class DistributedConfig:
    """How one run is spread over the processes torchrun starts (`sparsevision train --distributed`).

    The launch layout, not the run: `data.batch_size` stays the global batch and the losses are those of one
    process, so a run may be resumed on any number of ranks (the CLI takes these fields from its flags every time).
    """

    enabled: bool = False  # data parallel over the ranks; MoE experts sharded across them (expert parallel)
    backend: str = "auto"  # auto (nccl on CUDA, else gloo) | nccl | gloo
    ep_size: int = 0  # ranks sharing one copy of the experts; 0: gcd(world size, experts of every MoE layer)
    timeout_s: float = 600.0  # a collective waiting longer for a peer (crashed or hung rank) raises


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: str = "classification"  # name in the objective registry (train/objectives.py)
    objective_args: dict = field(default_factory=dict)  # extra keyword arguments for that objective
    steps: int = 1000
    accum_steps: int = 1
    eval_every: int = 100  # 0: evaluate only at the end
    log_every: int = 10
    checkpoint_every: int = 500  # 0: checkpoint only at the end
    keep_checkpoints: int = 1  # how many of the newest checkpoints to keep (older ones are deleted after a save)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 0  # model init, dropout, data order
    out_dir: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch.compile the training forward and backward: "off", "inductor" (torch.compile's default: fused kernels,
    # compiled at the first step) or "aot_eager" (traced but run op by op: checks that a model compiles, no speed).
    # Evaluation stays eager.
    compile: str = "off"
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


CHOICES = {
    "optim.name": ("adamw", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant", "step"),
    "loss.kind": ("softmax", "sigmoid"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "compile": ("off", "inductor", "aot_eager"),
    "data.augment": ("none", "crop", "crop_flip"),
    "distributed.backend": ("auto", "nccl", "gloo"),
}


def validate(config: TrainConfig) -> TrainConfig:
    """Raise ValueError naming the first bad field; return the config unchanged."""
    flat = flatten(config)
    for key, value in flat.items():  # nan passes every `< 0` test below and would train silently to nothing
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"{key} must be a finite number, got {value}")
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ValueError(f"{key}={flat[key]!r} is not one of {', '.join(allowed)}")
    positive = ["steps", "accum_steps", "log_every", "keep_checkpoints", "data.batch_size", "data.eval_batch_size",
                "data.image_size"]
    for key in positive:
        if flat[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {flat[key]}")
    for key in ["eval_every", "checkpoint_every", "data.num_workers", "optim.warmup_steps", "seed", "data.seed"]:
        if flat[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {flat[key]}")
    for key in ["optim.lr", "optim.weight_decay", "optim.min_lr", "optim.grad_clip_norm", "optim.eps",
                "optim.momentum", "distributed.ep_size"]:
        if flat[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {flat[key]}")
    if not 0 <= config.loss.label_smoothing < 1:
        raise ValueError(f"loss.label_smoothing must be in [0, 1), got {config.loss.label_smoothing}")
    if not all(0 <= b < 1 for b in config.optim.betas):
        raise ValueError(f"optim.betas must both be in [0, 1), got {config.optim.betas}")
    if config.data.batch_size % config.accum_steps:
        raise ValueError(f"data.batch_size={config.data.batch_size} is not divisible by "
                         f"accum_steps={config.accum_steps} (each micro-batch must have the same size)")
    if config.optim.warmup_steps >= config.steps > 1:
        # Met by `--steps N` on a preset with a long warmup (vmoe-default: 50): say how to shorten it too.
        raise ValueError(f"optim.warmup_steps={config.optim.warmup_steps} must be < steps={config.steps} "
                         f"(shorten it with --set optim.warmup_steps=N)")
    if not config.device.split(":")[0] in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={config.device!r} is not one of auto, cpu, cuda, cuda:N")
    if not config.distributed.timeout_s > 0:
        raise ValueError(f"distributed.timeout_s must be > 0, got {config.distributed.timeout_s}")
    return config


# ---------------------------------------------------------------------------------------------------- JSON form

def config_to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_from_dict(data: dict, cls: type = TrainConfig, prefix: str = ""):
    """Inverse of `config_to_dict`; unknown keys raise ValueError with the closest known names."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a JSON object, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = prefix + key
        if key not in names:
            raise ValueError(_unknown_key_message(path, [prefix + n for n in names]))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = config_from_dict(value, hint, path + ".")
        else:
            kwargs[key] = _coerce(value, hint, path)
    return cls(**kwargs)


def load_config(path) -> TrainConfig:
    with open(path) as f:
        return config_from_dict(json.load(f))


# ---------------------------------------------------------------------------------------------- --set overrides

def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...}; dict fields (model.overrides) stay one entry."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return f"unknown config key {key!r}{hint}"


def _parse_bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key}: expected a boolean (true/false), got {text!r}")


def _parse_loose(text: str) -> Any:
    """JSON if it parses (4 -> int, 0.5 -> float, true, [1, 2], {...}), the raw string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn `value` (a command-line string or a JSON value) into the field's declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if hint is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value), key)
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = _parse_loose(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list like [0.9, 0.999] or 0.9,0.999, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = _parse_loose(value)
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a JSON object like {{\"num_experts\": 4}}, got {value!r}")
        return dict(value)
    raise TypeError(f"{key}: unsupported field type {hint!r}")


def _replace_path(config: Any, parts: list[str], value: str, full_key: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(config)}
    head = parts[0]
    if head not in names:
        raise ValueError(_unknown_key_message(full_key, list(flatten_keys(TrainConfig()))))
    hint = _hints(type(config))[head]
    current = getattr(config, head)
    if dataclasses.is_dataclass(hint):
        if len(parts) == 1:
            raise ValueError(f"{full_key!r} is a section; set one of its fields, e.g. {full_key}."
                             f"{dataclasses.fields(hint)[0].name}=...")
        return dataclasses.replace(config, **{head: _replace_path(current, parts[1:], value, full_key)})
    if len(parts) == 1:
        return dataclasses.replace(config, **{head: _coerce(value, hint, full_key)})
    if hint is dict or typing.get_origin(hint) is dict:
        # model.overrides.num_experts=4: one entry of a dict field; nested names make nested dicts.
        new = dict(current)
        node = new
        for part in parts[1:-1]:
            node[part] = dict(node.get(part, {})) if isinstance(node.get(part), dict) else {}
            node = node[part]
        node[parts[-1]] = _parse_loose(value)
        return dataclasses.replace(config, **{head: new})
    raise ValueError(_unknown_key_message(full_key, list(flatten_keys(TrainConfig()))))


def flatten_keys(config: Any) -> list[str]:
    return list(flatten(config))


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply `key=value` strings in order, parsing each value with the type of its field."""
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        key, value = assignment.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set: bad key {key!r} in {assignment!r}")
        config = _replace_path(config, key.split("."), value, key)
    return config


def diff_configs(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every flattened field that differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
