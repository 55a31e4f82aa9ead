"""`sparsevision zeroshot` writes its JSON with the run (<run>/eval/), where a resumed run does not delete it."""
import json

import torch

from sparsevision.cli import main
from sparsevision.models import create_model
from sparsevision.train.checkpoint import save_checkpoint
from sparsevision.train.config import ModelConfig, TrainConfig, config_to_dict


def test_default_output_is_run_eval_dir(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("two_tower_tiny_test")
    run = tmp_path / "run"
    save_checkpoint(run, 3, model, {}, config_to_dict(TrainConfig(model=ModelConfig("two_tower_tiny_test"))))
    assert main(["zeroshot", "--model", str(run), "--data", "digits", "--max-examples", "12"]) == 0
    out = run / "eval" / "zeroshot_digits_test.json"
    assert str(out) in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_examples"] == 12 and result["chance"] == 0.1
    assert not list((run / "checkpoints").rglob("zeroshot_*.json"))
