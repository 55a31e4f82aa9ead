"""`sparsevision evaluate` on models it cannot measure: one line naming the problem, no traceback."""
import pytest

import sparsevision
from sparsevision.cli import main
from sparsevision.train.checkpoint import save_model_weights


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_image_text_model_is_refused_before_data(tmp_path, capsys):
    weights = tmp_path / "tt.safetensors"
    save_model_weights(sparsevision.create_model("two_tower_tiny_test"), weights)
    err = _cli_error(capsys, ["evaluate", "--model", "two_tower_tiny_test", "--weights", str(weights),
                              "--data", "digits"])
    assert "image-text model with no classifier head" in err and "zeroshot" in err


def test_dense_model_is_refused_before_data(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "vit.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test", num_classes=10), weights)
    monkeypatch.setattr("sparsevision.data.build_dataset", lambda *a, **k: pytest.fail("data built"))
    err = _cli_error(capsys, ["evaluate", "--model", "vit_tiny_test", "--weights", str(weights),
                              "--set", "num_classes=10", "--data", "digits", "--max-examples", "8"])
    assert "VisionTransformer has no MoE layer: capacity factors do not apply" in err
