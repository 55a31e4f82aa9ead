"""Config values that would train silently to nothing (nan, inf, out-of-range) are refused before the run starts."""
import pytest

from sparsevision.cli import main
from sparsevision.train.config import TrainConfig, apply_overrides, validate
from sparsevision.train.presets import get_preset, list_presets


@pytest.mark.parametrize("assignment, message", [
    ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number, got inf"),
    ("optim.weight_decay=-inf", "optim.weight_decay must be a finite number"),
    ("optim.betas=0.9,nan", "optim.betas must be a finite number"),
    ("loss.label_smoothing=2", r"loss.label_smoothing must be in \[0, 1\), got 2.0"),
    ("loss.label_smoothing=-0.1", r"loss.label_smoothing must be in \[0, 1\)"),
    ("optim.betas=0.9,1.5", r"optim.betas must both be in \[0, 1\)"),
    ("optim.momentum=-0.5", "optim.momentum must be >= 0"),
])
def test_validate_refuses(assignment, message):
    with pytest.raises(ValueError, match=message):
        validate(apply_overrides(TrainConfig(), [assignment]))


def test_presets_still_valid():
    for name in list_presets():
        validate(get_preset(name))


def test_cli_refuses_before_creating_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "test", "--out", str(out), "--set", "optim.lr=nan"]) == 1
    assert "optim.lr must be a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_short_steps_on_a_long_warmup_preset_says_how_to_fix(capsys):
    assert main(["train", "--preset", "vmoe-default", "--steps", "20", "--print-config"]) == 1
    assert capsys.readouterr().err.strip() == ("sparsevision train: error: optim.warmup_steps=50 must be < steps=20 "
                                               "(shorten it with --set optim.warmup_steps=N)")
    assert main(["train", "--preset", "vmoe-default", "--steps", "20", "--set", "optim.warmup_steps=2",
                 "--print-config"]) == 0
