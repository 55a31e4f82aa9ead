"""Text tokenizers for the image-text (LIMoE / contrastive) towers."""
from .tokenizer import (
    TOKENIZER_SPECS,
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    WordTokenizer,
    build_tokenizer,
)

__all__ = [
    "TOKENIZER_SPECS",
    "ByteTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "WordTokenizer",
    "build_tokenizer",
]
