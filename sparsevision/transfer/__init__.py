"""Transfer of pre-trained models to new tasks: frozen features, fine-tuning, VTAB, model selection, ensembles."""
from .features import extract_features, model_image_size

__all__ = ["extract_features", "model_image_size"]
