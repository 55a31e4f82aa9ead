"""`sparsevision models --flops` skips, with a note, models whose weights do not fit in free memory (the 7B and
13B models were killed by the out-of-memory killer without a word); bad --num-classes is refused."""
from sparsevision.cli import main
from sparsevision.models import cli as models_cli


def test_flops_skip_models_that_do_not_fit(capsys, monkeypatch):
    # vit_ti16: 5.72M parameters = 22.9 MB of float32 weights (28.6 MB with the activation margin).
    monkeypatch.setattr(models_cli, "available_memory_bytes", lambda: 20 * 2**20)
    assert main(["models", "vit_ti16", "--flops"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.split()[:3] == ["vit_ti16", "5.72M", "-"] and "skipped: ~27 MiB needed, 20 MiB free" in row
    monkeypatch.setattr(models_cli, "available_memory_bytes", lambda: None)  # unknown: count
    assert main(["models", "vit_tiny_test", "--flops"]) == 0
    assert "skipped" not in capsys.readouterr().out


def test_negative_num_classes(capsys):
    assert main(["models", "--num-classes", "-3"]) == 1
    assert capsys.readouterr().err.strip() == "sparsevision models: error: --num-classes must be >= 0, got -3"
