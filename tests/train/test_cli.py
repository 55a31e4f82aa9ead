"""`sparsevision train` end to end: the run directory it writes, --resume, and its one-line errors."""
import argparse
import json

import numpy as np
import pytest
from PIL import Image

from sparsevision.train import cli, list_checkpoints, load_checkpoint_model, read_metrics


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_train_writes_the_run_directory_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["--preset", "test", "--out", str(out), "--steps", "6", "--set", "optim.lr=0.002",
                    "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 6 and 0 <= summary["test"]["accuracy"] <= 1

    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 6 and config["optim"]["lr"] == 0.002 and config["out_dir"] == str(out)
    assert config["model"]["overrides"] == {"num_classes": 10, "img_size": 32}
    records = read_metrics(out)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    train_records = [r for r in records if r["split"] == "train"]
    for key in ["loss", "accuracy", "lr", "throughput", "grad_norm"]:
        assert all(np.isfinite(r[key]) for r in train_records), key
    assert [s for s, _ in list_checkpoints(out)] == [6]
    assert (out / "checkpoints" / "step_00000006" / "model.safetensors").is_file()
    png = Image.open(out / "curves.png")
    assert png.format == "PNG" and png.size[0] > 100 and np.asarray(png).std() > 0  # a real, non-blank plot

    # The test accuracy written in metrics.jsonl is what the saved model scores, recomputed independently.
    from sparsevision.data import build_dataset
    import torch

    model, _ = load_checkpoint_model(out)
    ds = build_dataset("digits", split="test", image_size=32)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = np.array([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        predicted = model(images).argmax(-1).numpy()
    test_record = [r for r in records if r["split"] == "test"][0]
    assert test_record["accuracy"] == pytest.approx((predicted == labels).mean(), abs=1e-6)

    assert run_cli(["--out", str(out), "--resume", "--steps", "8", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps[-1] == 8 and steps == sorted(set(steps))
    assert json.loads((out / "config.json").read_text())["steps"] == 8


@pytest.mark.parametrize("argv, error, message", [
    (["--preset", "nope"], ValueError, "unknown preset 'nope'"),
    (["--preset", "test", "--set", "optim.lrr=1"], ValueError, "unknown config key 'optim.lrr'"),
    (["--preset", "test", "--set", "steps=many"], ValueError, "steps: expected an integer"),
    (["--resume"], ValueError, "--resume needs --out"),
])
def test_bad_arguments_raise_named_errors(argv, error, message):
    with pytest.raises(error, match=message):
        run_cli(argv + ["--print-config"])


def test_resume_of_a_directory_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        run_cli(["--out", str(tmp_path), "--resume"])


def test_list_and_print(capsys):
    assert run_cli(["--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert "default" in listed and "vit-b16-i1k" in listed
    assert run_cli(["--preset", "test", "--set", "model.overrides.depth=3", "--print-config", "--out", "x"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"]["overrides"] == {"depth": 3} and printed["out_dir"] == "x"


def test_dispatcher_reports_errors_in_one_line(capsys):
    from sparsevision import cli as dispatcher

    if "train" not in dispatcher.COMMANDS:
        pytest.skip("sparsevision.cli does not list the train command yet")
    assert dispatcher.main(["train", "--preset", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsevision train: error: unknown preset 'nope'") and err.count("\n") == 1
