"""Training: configs and presets, the loop, optimisers and schedules, objectives, checkpoints and run logs."""
from .checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint_model, load_model_weights,
                         save_model_weights)
from .config import (DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, apply_overrides,
                     config_from_dict, config_to_dict, load_config)
from .loop import NonFiniteLossError, TrainResult, evaluate, train
from .objectives import ClassificationObjective, Objective, build_objective, register_objective
from .optim import build_optimizer, learning_rate
from .presets import get_preset, list_presets, register_preset
from .writer import read_metrics

__all__ = [
    "ClassificationObjective", "DataConfig", "LossConfig", "ModelConfig", "NonFiniteLossError", "Objective",
    "OptimConfig", "TrainConfig", "TrainResult", "apply_overrides", "build_objective", "build_optimizer",
    "config_from_dict", "config_to_dict", "evaluate", "get_preset", "latest_checkpoint", "learning_rate",
    "list_checkpoints", "list_presets", "load_checkpoint_model", "load_config", "load_model_weights",
    "read_metrics", "register_objective", "register_preset", "save_model_weights", "train",
]
