"""Transfer of pre-trained models to new tasks: frozen features, fine-tuning, VTAB, model selection, ensembles."""
from .features import extract_features, model_image_size
from .finetune import FinetuneResult, finetune, finetune_new_head, head_classes, predict_logits, replace_head
from .hyperrule import FinetuneConfig, default_flip, hyperrule, learning_rate
from .resolution import with_resolution

__all__ = ["FinetuneConfig", "FinetuneResult", "default_flip", "extract_features", "finetune", "finetune_new_head",
           "head_classes", "hyperrule", "learning_rate", "model_image_size", "predict_logits", "replace_head",
           "with_resolution"]
