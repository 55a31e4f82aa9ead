"""Named training configurations: `get_preset(name)`, `list_presets()`, `register_preset(name, config)`.

Other parts of the library add their own presets by calling `register_preset` from a module named
`sparsevision/train/presets_<topic>.py` (found and imported automatically on the first lookup), from a module
listed in `PLUGIN_MODULES`, or from anywhere before the lookup.

The ImageNet recipes copy big_vision's published configs (optimiser, schedule, batch, length). What the loop does
not have yet is their augmentation (Inception crop, RandAugment, mixup) and big_vision's bf16 Adam moments; the
data source `hf:imagenet-1k` needs the `datasets` extra and access to that dataset (or use
`--set data.dataset=folder:/path/to/imagenet`).
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Callable

from .config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, validate

_PRESETS: dict[str, TrainConfig | Callable[[], TrainConfig]] = {}
_DISCOVERED = False


def register_preset(name: str, config: TrainConfig | Callable[[], TrainConfig], overwrite: bool = False) -> None:
    """Add a named preset (a TrainConfig, or a function returning one, built on lookup)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"preset name must be a non-empty string, got {name!r}")
    if name in _PRESETS and not overwrite:
        raise ValueError(f"preset {name!r} is registered twice (pass overwrite=True to replace it)")
    if not (isinstance(config, TrainConfig) or callable(config)):
        raise ValueError(f"preset {name!r} must be a TrainConfig or a function returning one, got {type(config)}")
    _PRESETS[name] = config


# Modules that register presets / objectives when imported and live outside this file; sibling modules named
# `presets_<topic>.py` are found without being listed.
PLUGIN_MODULES = ["sparsevision.train.contrastive"]


def discover_plugins() -> None:
    """Import the plugin modules once, so that the presets and objectives they register are visible."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from . import __path__ as package_path

    names = list(PLUGIN_MODULES) + [f"{__package__}.{info.name}" for info in pkgutil.iter_modules(package_path)
                                    if info.name.startswith("presets_")]
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # the plugin exists but one of its own imports is missing: say so
                raise


def list_presets() -> list[str]:
    discover_plugins()
    return sorted(_PRESETS)


def get_preset(name: str) -> TrainConfig:
    discover_plugins()
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (available: {', '.join(sorted(_PRESETS))})")
    entry = _PRESETS[name]
    config = entry() if callable(entry) and not isinstance(entry, TrainConfig) else entry
    if not isinstance(config, TrainConfig):
        raise ValueError(f"preset {name!r} did not produce a TrainConfig (got {type(config).__name__})")
    return validate(config)


# ------------------------------------------------------------------------------------------------- built-ins

# A small ViT on scikit-learn digits (32 px, 4x4 patches of 8 px): what `sparsevision train` runs with no
# arguments. Sized to finish well within a minute on a 2-core CPU; pad-4 random crops (no flips: digits are not
# mirror-symmetric) keep the 1259 training images from being memorised. Measured: ~98-99% test accuracy.
DEFAULT = TrainConfig(
    model=ModelConfig("vit_tiny_test", {"patch_size": 8, "width": 64, "depth": 4, "num_heads": 4, "mlp_dim": 128}),
    data=DataConfig(dataset="digits", image_size=32, batch_size=64, eval_batch_size=512, augment="crop"),
    optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.1, warmup_steps=50, schedule="cosine"),
    loss=LossConfig(kind="softmax"),
    steps=1000, eval_every=100, log_every=20, checkpoint_every=500,
)

# A few seconds end to end: for tests and for checking an installation.
TEST = TrainConfig(
    model=ModelConfig("vit_tiny_test", {}),
    data=DataConfig(dataset="digits", image_size=32, batch_size=32, eval_batch_size=512),
    optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.1, warmup_steps=2, schedule="cosine"),
    steps=12, eval_every=6, log_every=2, checkpoint_every=6, device="cpu",
)

MIXER_DEFAULT = dataclasses.replace(
    DEFAULT, model=ModelConfig("mixer_tiny_test", {"patch_size": 8, "width": 64, "depth": 4,
                                                   "tokens_mlp_dim": 32, "channels_mlp_dim": 128}))

# The default recipe with a V-MoE: 4 experts, top-2, MoE MLPs in every other block, as a CPU-sized check of sparse
# training (aux losses, capacity, routing heat map written at the end).
VMOE_DEFAULT = dataclasses.replace(
    DEFAULT, model=ModelConfig("vmoe_tiny_test", {"patch_size": 8, "width": 64, "depth": 4, "num_heads": 4,
                                                  "mlp_dim": 128, "num_experts": 4, "k": 2}))

# ImageNet-1k examples in big_vision's train[:99%] split (1,281,167 images; the other 1% is minival).
_I1K_TRAIN = 1_268_355


def _epochs(epochs: int, batch_size: int) -> int:
    return round(epochs * _I1K_TRAIN / batch_size)


# big_vision configs/vit_i1k.py, variant B/16 (Steiner et al. 2021, "How to train your ViT"): scale_by_adam,
# lr 1e-3, wd 1e-4 *not* multiplied by lr (= torch AdamW weight_decay 0.1 at lr 1e-3), 10k warmup, cosine,
# grad clip 1.0, batch 4096, 300 epochs, softmax xent, token pooling with a pre-logits layer (rep_size=True).
VIT_B16_I1K = TrainConfig(
    model=ModelConfig("vit_b16", {"pool": "token", "representation_size": 768}),
    data=DataConfig(dataset="hf:imagenet-1k", image_size=224, batch_size=4096, eval_batch_size=1024,
                    num_workers=8, augment="none"),
    optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), warmup_steps=10_000,
                      schedule="cosine", grad_clip_norm=1.0),
    loss=LossConfig(kind="softmax"),
    steps=_epochs(300, 4096), eval_every=2500, log_every=50, checkpoint_every=1000, precision="auto",
)

# big_vision configs/vit_s16_i1k.py (Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k"): as above
# with batch 1024 for 90 epochs, global average pooling and fixed 2-D sin-cos position embeddings.
VIT_S16_I1K = dataclasses.replace(
    VIT_B16_I1K,
    model=ModelConfig("vit_s16", {"pool": "gap", "pos_embed": "sincos2d", "representation_size": 384}),
    data=dataclasses.replace(VIT_B16_I1K.data, batch_size=1024),
    steps=_epochs(90, 1024),
)

# big_vision configs/mlp_mixer_i1k.py (Tolstikhin et al. 2021): sigmoid xent, lr 1e-3, wd 1e-4 (decoupled),
# 10k warmup then linear decay to 1e-5, grad clip 1.0, batch 4096, 300 epochs. (Its stochastic depth 0.1 and
# head bias init -6.9 are not options of our Mixer.)
MIXER_B16_I1K = dataclasses.replace(
    VIT_B16_I1K,
    model=ModelConfig("mixer_b16", {}),
    optim=dataclasses.replace(VIT_B16_I1K.optim, schedule="linear", min_lr=1e-5),
    loss=LossConfig(kind="sigmoid"),
)

for _name, _config in [("default", DEFAULT), ("test", TEST), ("mixer-default", MIXER_DEFAULT),
                       ("vmoe-default", VMOE_DEFAULT),
                       ("vit-b16-i1k", VIT_B16_I1K), ("vit-s16-i1k", VIT_S16_I1K), ("mixer-b16-i1k", MIXER_B16_I1K)]:
    register_preset(_name, _config)
