"""Image-text contrastive losses: CLIP's softmax loss and SigLIP's pairwise sigmoid loss.

Both take a batch of paired embeddings [B, D] where row i of the image batch matches row i of the text batch, L2
normalise them (as both papers and big_vision's `two_towers` model do), and score all B x B pairs. The learnable
temperature (and SigLIP's bias) live in the `ClipLoss` / `SigLipLoss` modules so the optimiser sees them next to the
towers; the functional forms take them as tensors or floats.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# CLIP (Radford et al. 2021, Sec. 2.5): temperature initialised to 0.07, i.e. logit scale 1/0.07, and "clipped to
# prevent scaling the logits by more than 100".
CLIP_INIT_SCALE = 1.0 / 0.07
CLIP_MAX_SCALE = 100.0
# SigLIP (Zhai et al. 2023, Sec. 3.2 and Algorithm 1): t' = log t with t = 10 and b = -10 at initialisation.
SIGLIP_INIT_SCALE = 10.0
SIGLIP_INIT_BIAS = -10.0


def _check_pair(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> None:
    if img_emb.ndim != 2 or txt_emb.ndim != 2:
        raise ValueError(
            f"img_emb and txt_emb must be [batch, dim]; got shapes {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
        )
    if img_emb.shape != txt_emb.shape:
        raise ValueError(
            f"img_emb {tuple(img_emb.shape)} and txt_emb {tuple(txt_emb.shape)} must have the same shape (paired rows)"
        )
    if img_emb.shape[0] == 0:
        raise ValueError("contrastive losses need a non-empty batch; got batch size 0")


def _check_square(logits: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1] or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty square [batch, batch] matrix; got shape {tuple(logits.shape)}")


def _as_tensor(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _cosine(img_emb: torch.Tensor, txt_emb: torch.Tensor, normalize: bool) -> torch.Tensor:
    if img_emb.dtype in (torch.float16, torch.bfloat16):
        # Under autocast the towers emit half precision; logits scaled by up to 100 (or SigLIP's unclamped t) need
        # float32 to keep their ordering, so the loss is computed in float32 as big_vision does.
        img_emb, txt_emb = img_emb.float(), txt_emb.float()
    if normalize:
        # big_vision divides by (norm + 1e-8); F.normalize's max(norm, eps) differs only for near-zero vectors.
        img_emb = F.normalize(img_emb, dim=-1, eps=1e-8)
        txt_emb = F.normalize(txt_emb, dim=-1, eps=1e-8)
    return img_emb @ txt_emb.t()


def clip_logits(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    log_scale: torch.Tensor | float,
    max_scale: float | None = CLIP_MAX_SCALE,
    normalize: bool = True,
) -> torch.Tensor:
    """Image-to-text logits [B, B]: exp(log_scale), capped at `max_scale`, times the cosine similarities."""
    _check_pair(img_emb, txt_emb)
    log_scale = _as_tensor(log_scale, img_emb)
    if max_scale is not None:
        # Clamping the log keeps the gradient to the parameter zero above the cap, so it cannot drift further;
        # open_clip does the same by clamping the parameter in place after each step.
        log_scale = log_scale.clamp(max=math.log(max_scale))
    return log_scale.exp() * _cosine(img_emb, txt_emb, normalize)


def clip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    log_scale: torch.Tensor | float = math.log(CLIP_INIT_SCALE),
    max_scale: float | None = CLIP_MAX_SCALE,
    normalize: bool = True,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy: the mean of the image->text and text->image losses (CLIP Figure 3)."""
    return clip_loss_from_logits(clip_logits(img_emb, txt_emb, log_scale, max_scale, normalize))


def clip_loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of square image->text logits whose diagonal holds the matching pairs."""
    _check_square(logits)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def siglip_logits(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    log_scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    normalize: bool = True,
) -> torch.Tensor:
    """Pairwise logits [B, B] = t * zimg @ ztxt^T + b with t = exp(log_scale) (SigLIP Algorithm 1)."""
    _check_pair(img_emb, txt_emb)
    log_scale = _as_tensor(log_scale, img_emb)
    bias = _as_tensor(bias, img_emb)
    return log_scale.exp() * _cosine(img_emb, txt_emb, normalize) + bias


def siglip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    log_scale: torch.Tensor | float = math.log(SIGLIP_INIT_SCALE),
    bias: torch.Tensor | float = SIGLIP_INIT_BIAS,
    normalize: bool = True,
) -> torch.Tensor:
    """SigLIP's loss: -sum_ij log sigmoid(z_ij * logit_ij) / |B|, z = +1 on the diagonal and -1 elsewhere.

    The sum runs over all B^2 pairs but is divided by B only (Algorithm 1, `l = -sum(log_sigmoid(...)) / n`), as
    big_vision's trainer does (sum over texts, mean over images). `logsigmoid` keeps it finite for huge logits.
    """
    return siglip_loss_from_logits(siglip_logits(img_emb, txt_emb, log_scale, bias, normalize))


def siglip_loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss of square pairwise logits whose diagonal holds the matching pairs."""
    _check_square(logits)
    batch = logits.shape[0]
    labels = 2.0 * torch.eye(batch, dtype=logits.dtype, device=logits.device) - 1.0
    return -F.logsigmoid(labels * logits).sum() / batch


def _retrieval_metrics(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    targets = torch.arange(logits.shape[0], device=logits.device)
    return {
        "i2t_acc": (logits.argmax(dim=1) == targets).float().mean(),
        "t2i_acc": (logits.argmax(dim=0) == targets).float().mean(),
    }


class ClipLoss(nn.Module):
    """CLIP loss with its learnable logit scale, stored as log scale and initialised to log(1/0.07) as in CLIP.

    (big_vision's `two_towers` instead starts from `temperature_init=1.0` and does not clamp; pass `init_scale=1.0,
    max_scale=None` to match it.)
    """

    def __init__(
        self,
        init_scale: float = CLIP_INIT_SCALE,
        max_scale: float | None = CLIP_MAX_SCALE,
        learnable: bool = True,
        normalize: bool = True,
    ):
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive; got {init_scale}")
        if max_scale is not None and max_scale < init_scale:
            raise ValueError(f"max_scale={max_scale} is below init_scale={init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learnable)
        self.max_scale = max_scale
        self.normalize = normalize

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = clip_logits(img_emb, txt_emb, self.log_scale, self.max_scale, self.normalize)
        loss = clip_loss_from_logits(logits)
        scale = self.log_scale.detach().exp()
        if self.max_scale is not None:
            scale = scale.clamp(max=self.max_scale)
        return loss, {"scale": scale, **_retrieval_metrics(logits.detach())}


class SigLipLoss(nn.Module):
    """SigLIP loss with learnable log temperature t' (init log 10) and bias b (init -10), as in the paper."""

    def __init__(
        self,
        init_scale: float = SIGLIP_INIT_SCALE,
        init_bias: float = SIGLIP_INIT_BIAS,
        learnable: bool = True,
        normalize: bool = True,
    ):
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive; got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)), requires_grad=learnable)
        self.normalize = normalize

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = siglip_logits(img_emb, txt_emb, self.log_scale, self.bias, self.normalize)
        loss = siglip_loss_from_logits(logits)
        scale, bias = self.log_scale.detach().exp(), self.bias.detach()
        return loss, {"scale": scale, "bias": bias, **_retrieval_metrics(logits.detach())}
