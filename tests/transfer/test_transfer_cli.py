"""`sparsevision transfer` end to end on a tiny training run; the weights load back with load_model."""
import json


from sparsevision import create_model
from sparsevision.cli import main
from sparsevision.data import build_dataset
from sparsevision.models.loading import load_model
from sparsevision.train import save_model_weights
from sparsevision.transfer import model_image_size, predict_logits


def test_finetune_at_a_new_resolution_writes_a_loadable_run(pretrained_run, tmp_path, capsys):
    out = tmp_path / "ft"
    rc = main(["transfer", "--model", pretrained_run, "--data", "digits", "--steps", "6", "--batch-size", "32",
               "--max-train-examples", "128", "--resolution", "48", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "finetune" in printed
    for name in ("transfer.json", "model.safetensors", "config.json", "curves.png", "reliability.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "transfer.json").read_text())
    assert report["mode"] == "finetune" and report["img_size"] == 48 and report["num_train_examples"] == 128
    assert report["config"]["steps"] == 6 and report["config"]["crop"] == 48 and report["config"]["flip"] is False
    assert {"ece", "nll", "brier"} <= set(report["test_calibration"])
    model, name = load_model(str(out))
    assert name == "vit_tiny_test" and model_image_size(model) == 48
    logits, labels = predict_logits(model, build_dataset("digits", "test", 48), progress=False)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert abs(accuracy - report["test_accuracy"]) < 1e-6
    assert abs(report["test_calibration"]["accuracy"] - report["test_accuracy"]) < 1e-6

    # The same directory again needs --force.
    rc = main(["transfer", "--model", pretrained_run, "--data", "digits", "--steps", "1", "--out", str(out)])
    assert rc == 1 and "--force" in capsys.readouterr().err


def test_linear_probe_from_the_cli(pretrained_run, tmp_path):
    out = tmp_path / "lin"
    assert main(["transfer", "--model", pretrained_run, "--data", "digits", "--mode", "linear",
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "transfer.json").read_text())
    assert report["mode"] == "linear" and report["linear_l2"] is not None
    assert report["test_accuracy"] > 0.3 and len(report["linear_search"]) == 5
    model, _ = load_model(str(out))
    assert model.head.weight.abs().sum() > 0


def test_bad_arguments_are_one_line_errors(pretrained_run, tmp_path, capsys):
    assert main(["transfer", "--model", pretrained_run, "--data", "digits", "--mode", "full",
                 "--out", str(tmp_path / "a")]) == 1
    assert "unknown --mode 'full'" in capsys.readouterr().err
    assert main(["transfer", "--model", pretrained_run, "--data", "digits", "--resolution", "big",
                 "--out", str(tmp_path / "b")]) == 1
    assert "--resolution" in capsys.readouterr().err
    weights = tmp_path / "mixer.safetensors"
    save_model_weights(create_model("mixer_tiny_test"), weights)
    assert main(["transfer", "--model", "mixer_tiny_test", "--weights", str(weights), "--data", "digits",
                 "--resolution", "48", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "c")]) == 1
    assert "cannot change resolution" in capsys.readouterr().err
