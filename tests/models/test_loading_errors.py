"""Bad `--model` inputs reach the user as one line naming the problem (through the CLI, no traceback)."""
import pytest

import sparsevision
from sparsevision.cli import main
from sparsevision.models.loading import load_model
from sparsevision.train.checkpoint import save_model_weights


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_corrupt_safetensors_is_named(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        load_model(str(junk))
    err = _cli_error(capsys, ["fewshot", "--model", str(junk), "--data", "digits"])
    assert "junk.safetensors is not a readable safetensors file" in err


def test_missing_bare_path_says_it_is_neither_file_nor_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no file or directory 'old_run', and unknown model 'old_run'"):
        load_model("old_run")
    err = _cli_error(capsys, ["fewshot", "--model", "vit_tiny_tst", "--data", "digits"])
    assert "no file or directory 'vit_tiny_tst'" in err and "did you mean vit_tiny_test" in err


def test_misspelt_override_is_a_one_line_error(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test"), weights)
    with pytest.raises(ValueError, match="unexpected keyword argument 'num_clases'"):
        load_model("vit_tiny_test", str(weights), {"num_clases": 10})
    err = _cli_error(capsys, ["fewshot", "--model", "vit_tiny_test", "--weights", str(weights),
                              "--set", "num_clases=10", "--data", "digits"])
    assert "'num_clases'" in err and "constructor overrides" in err
