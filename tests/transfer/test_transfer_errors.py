"""`sparsevision transfer`: an image-text model is refused before any data is built; linear mode does not print
a fine-tuning recipe (steps, batch, MixUp) it does not use."""
import numpy as np
from PIL import Image

import sparsevision
from sparsevision.cli import main
from sparsevision.train.checkpoint import save_model_weights


def test_image_text_model_refused_in_both_modes(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "tt.safetensors"
    save_model_weights(sparsevision.create_model("two_tower_tiny_test"), weights)
    built = []
    monkeypatch.setattr("sparsevision.data.build_dataset", lambda *a, **k: built.append(a))
    for mode in ("finetune", "linear"):
        assert main(["transfer", "--model", "two_tower_tiny_test", "--weights", str(weights), "--data", "digits",
                     "--mode", mode, "--out", str(tmp_path / mode)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "TwoTower has no classifier head" in err
        assert "fine-tuning and linear probes need" in err and "sparsevision fewshot" in err
    assert built == []


def test_linear_mode_reports_no_training_recipe(tmp_path, capsys):
    weights = tmp_path / "vit.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test"), weights)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):  # a tiny task: the probe itself takes no time
        for name in ("a", "b"):
            (tmp_path / "task" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "task" / split / name / f"{i}.png")
    assert main(["transfer", "--model", "vit_tiny_test", "--weights", str(weights), "--data",
                 f"folder:{tmp_path / 'task'}", "--mode", "linear", "--out", str(tmp_path / "lin"),
                 "--progress", "off"]) == 0
    captured = capsys.readouterr()
    assert "logistic-regression head with L2 chosen on val" in captured.out
    assert "MixUp" not in captured.out and "note: batch_size" not in captured.err
    row = [line for line in captured.out.splitlines() if line.startswith("linear ")][0]
    assert row.split()[1] == "-"  # no steps
