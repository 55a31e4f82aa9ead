"""Offline text tokenizers returning padded LongTensors [B, max_len] for the text tower.

Every tokenizer here pads on the right with `pad_id` and exposes `pad_id`, `bos_id`, `eos_id` and `vocab_size`, which
is all `TextTransformer` needs (it masks `pad_id` and can pool at `eos_id`). Nothing here downloads: the
SentencePiece and Hugging Face wrappers only open files already on disk.

- `ByteTokenizer`: UTF-8 bytes shifted past three special ids. Needs no vocabulary file, so it always works (tests,
  toy runs); ByT5 (Xue et al. 2022) shifts bytes past three special ids the same way (its third is unk, ours bos).
- `WordTokenizer`: whitespace/punctuation words with a fixed vocabulary, built from a corpus or a vocab file.
- `SentencePieceTokenizer`, `HFTokenizer`: wrappers for a model file / tokenizer directory the user already has
  (big_vision's SigLIP uses a SentencePiece model; LiT/LIMoE-style setups often use one too).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Iterable, Sequence

import torch

Texts = str | Sequence[str]


def _as_list(texts: Texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] is {type(text).__name__}, expected str")
    return texts


def _check_max_len(max_len: int, specials: int) -> None:
    if not isinstance(max_len, int) or max_len <= specials:
        raise ValueError(f"max_len must be an int larger than the {specials} special token(s) added; got {max_len!r}")


class _SpecialsTokenizer:
    """Shared logic: encode one text to ids, add BOS/EOS, truncate and right-pad to `max_len`."""

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int

    def __init__(self, max_len: int, add_bos: bool, add_eos: bool):
        self.add_bos = add_bos
        self.add_eos = add_eos
        _check_max_len(max_len, int(add_bos) + int(add_eos))
        self.max_len = max_len

    def _content_ids(self, text: str, budget: int) -> list[int]:
        raise NotImplementedError

    def _content_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Ids of one text with its special tokens, truncated to `max_len` (EOS is kept: the text is cut instead)."""
        budget = self.max_len - int(self.add_bos) - int(self.add_eos)
        ids = self._content_ids(text, budget)[:budget]
        return [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos

    def __call__(self, texts: Texts) -> torch.Tensor:
        """LongTensor [B, max_len] of ids, right-padded with `pad_id`; a single string gives B = 1."""
        rows = [self.encode(text) for text in _as_list(texts)]
        out = torch.full((len(rows), self.max_len), self.pad_id, dtype=torch.long)
        for index, ids in enumerate(rows):
            out[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Text of one row of ids (a str) or of a batch [B, L] (a list); special ids are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row) for row in ids]
        specials = {self.pad_id, self.bos_id, self.eos_id}
        return self._content_text([int(i) for i in ids if int(i) not in specials])


class ByteTokenizer(_SpecialsTokenizer):
    """UTF-8 bytes as ids 3..258 after pad=0, bos=1, eos=2; vocab_size 259."""

    pad_id, bos_id, eos_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def __init__(self, max_len: int = 32, add_bos: bool = True, add_eos: bool = True):
        super().__init__(max_len, add_bos, add_eos)

    def _content_ids(self, text: str, budget: int) -> list[int]:
        data = text.encode("utf-8")
        if len(data) > budget:
            # Cut on a character boundary: 'ignore' drops a multi-byte character left incomplete by the slice.
            data = data[:budget].decode("utf-8", errors="ignore").encode("utf-8")
        return [byte + self.offset for byte in data]

    def _content_text(self, ids: list[int]) -> str:
        bad = [i for i in ids if not self.offset <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the byte range [{self.offset}, {self.vocab_size})")
        return bytes(i - self.offset for i in ids).decode("utf-8", errors="replace")


_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class WordTokenizer(_SpecialsTokenizer):
    """Words and punctuation marks looked up in a fixed vocabulary; pad=0, bos=1, eos=2, unk=3, words from 4."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    specials = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(
        self,
        vocab: Sequence[str],
        max_len: int = 32,
        lowercase: bool = True,
        add_bos: bool = True,
        add_eos: bool = True,
    ):
        super().__init__(max_len, add_bos, add_eos)
        words = [w for w in vocab if w not in self.specials]
        if len(set(words)) != len(words):
            raise ValueError("vocab has repeated words")
        self.lowercase = lowercase
        self.itos = list(self.specials) + words
        self.stoi = {word: index for index, word in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_vocab: int | None = None, min_count: int = 1, **kwargs):
        """Vocabulary of the most frequent words in `texts` (ties broken alphabetically, so it is deterministic)."""
        lowercase = kwargs.get("lowercase", True)
        counts = Counter(w for text in texts for w in _WORD_RE.findall(text.lower() if lowercase else text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[:max_vocab] if max_vocab else ranked, **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs):
        """One word per line (special tokens in the file are skipped; they always take ids 0-3)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"word vocabulary file {os.fspath(path)!r} does not exist")
        with open(path, encoding="utf-8") as handle:
            return cls([line.rstrip("\n") for line in handle if line.strip()], **kwargs)

    def _content_ids(self, text: str, budget: int) -> list[int]:
        words = _WORD_RE.findall(text.lower() if self.lowercase else text)
        return [self.stoi.get(w, self.unk_id) for w in words[:budget]]

    def _content_text(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] if 0 <= i < self.vocab_size else self.specials[self.unk_id] for i in ids)


class SentencePieceTokenizer(_SpecialsTokenizer):
    """A SentencePiece model file on disk (needs the `sentencepiece` package); EOS appended, no BOS by default.

    big_vision's SigLIP text pipeline appends EOS and pads with 0 to a fixed length; we take the pad/bos/eos ids from
    the model itself and fall back to 0 for pad when the model defines none.
    """

    def __init__(self, path: str | os.PathLike, max_len: int = 32, add_bos: bool = False, add_eos: bool = True):
        super().__init__(max_len, add_bos, add_eos)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece model file {os.fspath(path)!r} does not exist")
        try:
            import sentencepiece
        except ImportError as err:
            raise ImportError("SentencePieceTokenizer needs 'sentencepiece': pip install sentencepiece") from err
        self.sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(path))
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        if (add_bos and self.bos_id < 0) or (add_eos and self.eos_id < 0):
            raise ValueError(f"SentencePiece model {os.fspath(path)!r} defines no BOS/EOS id but add_bos/add_eos asks")

    def _content_ids(self, text: str, budget: int) -> list[int]:
        return list(self.sp.encode(text))

    def _content_text(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class HFTokenizer:
    """A Hugging Face tokenizer saved in a local directory (needs `transformers`); never contacts the Hub."""

    def __init__(self, path: str | os.PathLike, max_len: int = 32):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Hugging Face tokenizer directory {os.fspath(path)!r} does not exist")
        _check_max_len(max_len, 0)
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ImportError("HFTokenizer needs the 'transformers' package: pip install transformers") from err
        self.tok = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True)
        self.max_len = max_len
        self.vocab_size = len(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.bos_id = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.cls_token_id
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, truncation=True, max_length=self.max_len)["input_ids"]

    def __call__(self, texts: Texts) -> torch.Tensor:
        rows = [self.encode(text) for text in _as_list(texts)]
        out = torch.full((len(rows), self.max_len), self.pad_id, dtype=torch.long)
        for index, ids in enumerate(rows):
            out[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str | list[str]:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row) for row in ids]
        return self.tok.decode(ids, skip_special_tokens=True)


TOKENIZER_SPECS = ("bytes", "words:<vocab file>", "spm:<model file>", "hf:<directory>")


def build_tokenizer(spec: str = "bytes", max_len: int = 32, **kwargs):
    """A tokenizer from a short spec string: 'bytes', 'words:<vocab.txt>', 'spm:<model>' or 'hf:<dir>'."""
    kind, _, path = spec.partition(":")
    if kind == "bytes" and not path:
        return ByteTokenizer(max_len=max_len, **kwargs)
    if kind in ("words", "spm", "sentencepiece", "hf") and path:
        if kind == "words":
            return WordTokenizer.from_file(path, max_len=max_len, **kwargs)
        if kind == "hf":
            return HFTokenizer(path, max_len=max_len, **kwargs)
        return SentencePieceTokenizer(path, max_len=max_len, **kwargs)
    raise ValueError(f"unknown tokenizer spec {spec!r}; expected one of {', '.join(TOKENIZER_SPECS)}")
