"""Model families; importing this package registers every model name."""
from . import limoe, mixer, two_tower, vit, vmoe  # noqa: F401  (registration side effects)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
