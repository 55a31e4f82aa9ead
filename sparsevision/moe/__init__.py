"""Sparse mixture-of-experts layers: V-MoE top-k routing (Riquelme et al. 2021), expert choice (Zhou et al. 2022)
and Soft MoE (Puigcerver et al. 2023), after google-research/vmoe. See `layer.MoeMlp` for the layer."""
from .capacity import compute_capacity
from .dispatch import DenseDispatcher, Dispatcher, IndexDispatcher, make_dispatcher
from .experts import Experts
from .grouped import PackedDispatcher, grouped_mm_usable
from .layer import MoeMlp
from .losses import gshard_loss, importance_loss, load_loss
from .metrics import MoeMetrics, average_metrics, total_aux_loss
from .routers import (ExpertChoiceRouter, NoisyTopExpertsPerItemRouter, NoisyTopItemsPerExpertRouter, Routing,
                      SoftRouter)

__all__ = [
    "compute_capacity", "Dispatcher", "DenseDispatcher", "IndexDispatcher", "make_dispatcher", "PackedDispatcher",
    "grouped_mm_usable", "Experts", "MoeMlp",
    "gshard_loss", "importance_loss", "load_loss", "MoeMetrics", "average_metrics", "total_aux_loss",
    "ExpertChoiceRouter", "NoisyTopExpertsPerItemRouter", "NoisyTopItemsPerExpertRouter", "Routing", "SoftRouter",
]
