"""Checkpoint conversion: official JAX/Flax trees (vit_jax, big_vision, vmoe) and timm state dicts into sparsevision
models, and dense-to-sparse upcycling (Komatsuzaki et al. 2023)."""
from .flax import LoadReport, flatten_dict, load_flax_params, load_npz, use_tanh_gelu_

__all__ = ["LoadReport", "flatten_dict", "load_flax_params", "load_npz", "use_tanh_gelu_"]
