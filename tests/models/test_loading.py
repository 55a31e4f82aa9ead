"""`--model` resolution shared by the sub-commands: registered name + weights, self-describing safetensors, errors."""
import json

import pytest
import torch

import sparsevision
from sparsevision.models.loading import load_model
from sparsevision.train.checkpoint import save_model_weights


def _same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_registered_name_with_weights_and_self_describing_file(tmp_path):
    torch.manual_seed(0)
    model = sparsevision.create_model("vit_tiny_test", num_classes=3, head_zero_init=False)
    plain = tmp_path / "plain.safetensors"
    save_model_weights(model, plain)
    loaded, name = load_model("vit_tiny_test", weights=str(plain), overrides={"num_classes": 3})
    assert name == "vit_tiny_test" and not loaded.training
    _same_outputs(model, loaded)
    # A file that names its model (as `sparsevision convert` writes) needs nothing else.
    described = tmp_path / "described.safetensors"
    save_model_weights(model, described, metadata={"model": "vit_tiny_test", "overrides": json.dumps({"num_classes": 3})})
    loaded, name = load_model(str(described))
    _same_outputs(model, loaded)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "run"))
    with pytest.raises(ValueError, match="did you mean vit_b16"):
        load_model("vit_b61", weights="w.safetensors")
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_model("vit_b16")
    plain = tmp_path / "plain.safetensors"
    save_model_weights(sparsevision.create_model("vit_tiny_test"), plain)
    with pytest.raises(FileNotFoundError, match="no model name in its metadata"):
        load_model(str(plain))
    with pytest.raises(ValueError, match="--weights goes with a registered model name"):
        load_model(str(plain), weights=str(plain))
    # Weights of another shape: the mismatching keys are named.
    with pytest.raises(Exception, match="head"):
        load_model("vit_tiny_test", weights=str(plain), overrides={"num_classes": 5})
