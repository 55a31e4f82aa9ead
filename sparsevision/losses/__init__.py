"""Training losses."""
from .contrastive import (
    ClipLoss,
    SigLipLoss,
    clip_logits,
    clip_loss,
    clip_loss_from_logits,
    siglip_logits,
    siglip_loss,
    siglip_loss_from_logits,
)

__all__ = [
    "ClipLoss",
    "SigLipLoss",
    "clip_logits",
    "clip_loss",
    "clip_loss_from_logits",
    "siglip_logits",
    "siglip_loss",
    "siglip_loss_from_logits",
]
