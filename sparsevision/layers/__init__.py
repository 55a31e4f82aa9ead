"""Building blocks shared by the model families."""
from .attention import Attention
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .patch_merger import PatchMerger
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed

__all__ = ["Attention", "Mlp", "PatchEmbed", "PatchMerger", "resample_pos_embed", "sincos_2d_pos_embed"]
