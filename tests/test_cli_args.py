"""Arguments shared by the sub-commands: --device resolution and number lists."""
import pytest
import torch

from sparsevision.cli_args import positive_numbers, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_positive_numbers():
    assert positive_numbers("0.5, 1,1.5", "--capacity-factors") == [0.5, 1.0, 1.5]
    assert positive_numbers("25,1,5", "--shots", int) == [25, 1, 5]
    for text in ("", "abc", "0,1", "-1", "1.5"):
        kind = int if text == "1.5" else float
        with pytest.raises(ValueError, match="--flag"):
            positive_numbers(text, "--flag", kind)
