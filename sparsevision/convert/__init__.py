"""Checkpoint conversion: official JAX/Flax trees (vit_jax, big_vision, vmoe) and timm state dicts into sparsevision
models, and dense-to-sparse upcycling (Komatsuzaki et al. 2023)."""
from .common import LoadReport
from .flax import flatten_dict, load_flax_params, load_npz, use_tanh_gelu_
from .timm import from_timm, load_timm_weights
from .upcycle import upcycle_vit_to_moe

__all__ = ["LoadReport", "flatten_dict", "load_flax_params", "load_npz", "use_tanh_gelu_", "from_timm",
           "load_timm_weights", "upcycle_vit_to_moe"]
