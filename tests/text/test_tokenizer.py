import importlib.util

import pytest
import torch

from sparsevision.text import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, WordTokenizer, build_tokenizer


def test_byte_ids_follow_the_utf8_bytes():
    tok = ByteTokenizer(max_len=8)
    out = tok(["hi", "é"])
    assert out.dtype == torch.long and out.shape == (2, 8)
    # 'h' = 0x68, 'i' = 0x69; 'é' = C3 A9 in UTF-8; bytes are shifted by the 3 special ids pad=0, bos=1, eos=2.
    assert out[0].tolist() == [1, 0x68 + 3, 0x69 + 3, 2, 0, 0, 0, 0]
    assert out[1].tolist() == [1, 0xC3 + 3, 0xA9 + 3, 2, 0, 0, 0, 0]
    assert tok.vocab_size == 259 and int(out.max()) < tok.vocab_size


@pytest.mark.parametrize("text", ["a photo of a cat.", "Ünïcödé ✓ 猫", "", "  spaces  "])
def test_byte_round_trip(text):
    tok = ByteTokenizer(max_len=64)
    assert tok.decode(tok(text)[0]) == text
    assert tok.decode(tok([text, "x"])) == [text, "x"]


def test_byte_truncation_keeps_bos_eos_and_whole_characters():
    tok = ByteTokenizer(max_len=6)
    ids = tok("abcdefgh")[0].tolist()
    assert ids == [1] + [ord(c) + 3 for c in "abcd"] + [2]
    # 'é' is two bytes; a budget of 4 bytes after "abc" would split it: the half character must be dropped.
    ids = tok("abcé")[0].tolist()
    assert ids == [1] + [ord(c) + 3 for c in "abc"] + [2, 0]
    assert ByteTokenizer(max_len=3, add_bos=False, add_eos=False)("abcdef")[0].tolist() == [100, 101, 102]


def test_ids_are_deterministic_and_batch_independent():
    tok = build_tokenizer("bytes", max_len=16)
    assert torch.equal(tok(["cat", "a dog"]), tok(["cat", "a dog"]))
    assert torch.equal(tok(["cat", "a dog"])[1], tok("a dog")[0])
    assert torch.equal(ByteTokenizer(16)("cat"), tok("cat"))


def test_word_tokenizer_vocab_unk_and_round_trip():
    tok = WordTokenizer.from_texts(["a cat", "a dog", "A cat!"], max_len=6)
    # Most frequent first, ties alphabetical: a (3), cat (2), !, dog (1 each).
    assert tok.itos[4:] == ["a", "cat", "!", "dog"]
    out = tok(["A cat!", "a bird"])
    assert out[0].tolist() == [1, 4, 5, 6, 2, 0]
    assert out[1].tolist() == [1, 4, tok.unk_id, 2, 0, 0]
    assert tok.decode(out[0]) == "a cat !"


def test_word_tokenizer_from_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("<pad>\nhello\nworld\n", encoding="utf-8")
    tok = build_tokenizer(f"words:{path}", max_len=5)
    assert tok.vocab_size == 6
    assert tok("Hello world")[0].tolist() == [1, 4, 5, 2, 0]


def test_bad_specs_and_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer spec 'gpt2'"):
        build_tokenizer("gpt2")
    with pytest.raises(ValueError, match="unknown tokenizer spec"):
        build_tokenizer("spm:")
    with pytest.raises(ValueError, match="max_len"):
        ByteTokenizer(max_len=2)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        ByteTokenizer()(["ok", 3])
    with pytest.raises(FileNotFoundError, match="missing.model"):
        build_tokenizer(f"spm:{tmp_path / 'missing.model'}")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        build_tokenizer(f"hf:{tmp_path / 'no_such_dir'}")
    with pytest.raises(FileNotFoundError):
        build_tokenizer(f"words:{tmp_path / 'none.txt'}")


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_sentencepiece_without_package_raises_import_error(tmp_path):
    model = tmp_path / "fake.model"
    model.write_bytes(b"\x00")
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        SentencePieceTokenizer(model)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_hf_without_package_raises_import_error(tmp_path):
    with pytest.raises(ImportError, match="pip install transformers"):
        HFTokenizer(tmp_path)
