import argparse

import numpy as np
import pytest
import torch
from flax_reference import make_tree
from safetensors import safe_open

from sparsevision.convert import cli
from sparsevision.models import create_model
from sparsevision.train.checkpoint import load_model_weights

TINY = dict(width=32, depth=4, heads=2, mlp=64, patch=8, img=32, classes=10, rep=32)  # vmoe_tiny_test's shape


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args([str(a) for a in argv]))


def test_convert_vmoe_npz(tmp_path, capsys):
    tree = make_tree("vmoe", moe_layers=(1, 3), experts=4, **TINY)
    np.savez(tmp_path / "vmoe.npz", **tree)
    assert run_cli(tmp_path / "vmoe.npz", tmp_path / "out.safetensors", "--model", "vmoe_tiny_test") == 0
    assert "vmoe naming" in capsys.readouterr().out
    model = create_model("vmoe_tiny_test")
    load_model_weights(model, tmp_path / "out.safetensors")
    np.testing.assert_allclose(model.blocks[3].mlp.experts.fc1_weight.detach().numpy(),
                               tree["Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"], rtol=1e-6)
    with safe_open(str(tmp_path / "out.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "vmoe_tiny_test" and meta["converter"] == "vmoe"
    # The file rebuilds the model with Flax's tanh GELU, so it computes the official forward (no token dropped at
    # eval capacity 4).
    from flax_reference import forward

    from sparsevision.models.loading import load_model

    loaded, _ = load_model(str(tmp_path / "out.safetensors"), overrides={"eval_capacity_factor": 4.0})
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    want = forward(tree, "vmoe", x.astype(np.float64), heads=2, rep=32, k=2)
    np.testing.assert_allclose(loaded(torch.from_numpy(x)).detach().numpy(), want, atol=2e-5)  # exact GELU is off by 9e-4


def test_convert_upcycles_a_dense_checkpoint_with_overrides(tmp_path):
    tree = make_tree("vit_jax", **{**TINY, "classes": 3})
    np.savez(tmp_path / "vit.npz", **tree)
    out = tmp_path / "moe.safetensors"
    run_cli(tmp_path / "vit.npz", out, "--model", "vmoe_tiny_test", "--set", "num_classes=3", "--upcycle")
    model = create_model("vmoe_tiny_test", num_classes=3)
    load_model_weights(model, out)
    ex = model.blocks[1].mlp.experts.fc2_weight.detach().numpy()
    for e in range(4):
        np.testing.assert_allclose(ex[e], tree["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"], rtol=1e-6)
    np.testing.assert_allclose(model.head.bias.detach().numpy(), tree["head/bias"], rtol=1e-6)


def test_convert_errors(tmp_path):
    tree = make_tree("vit_jax", **TINY)
    np.savez(tmp_path / "vit.npz", **tree)
    with pytest.raises(ValueError, match="upcycle"):
        run_cli(tmp_path / "vit.npz", tmp_path / "x.safetensors", "--model", "vmoe_tiny_test")
    with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(32, 10\), model expects \(32, 4\)"):
        run_cli(tmp_path / "vit.npz", tmp_path / "x.safetensors", "--model", "vmoe_tiny_test", "--upcycle",
                "--set", "num_classes=4")
    with pytest.raises(FileNotFoundError):
        run_cli(tmp_path / "nope.npz", tmp_path / "x.safetensors", "--model", "vit_tiny_test")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        run_cli(tmp_path / "vit.npz", tmp_path / "x.safetensors", "--model", "vmoe_tiny_test", "--set", "oops")
    assert not (tmp_path / "x.safetensors").exists()


def test_non_strict_writes_what_fits(tmp_path, capsys):
    tree = make_tree("vit_jax", **TINY)
    tree["head/kernel"] = np.zeros((32, 4))
    np.savez(tmp_path / "vit.npz", **tree)
    run_cli(tmp_path / "vit.npz", tmp_path / "x.safetensors", "--model", "vmoe_tiny_test", "--upcycle",
            "--non-strict")
    assert "head/kernel" in capsys.readouterr().out
    model = create_model("vmoe_tiny_test")
    load_model_weights(model, tmp_path / "x.safetensors")
    np.testing.assert_allclose(model.cls_token.detach().numpy(), tree["cls"], rtol=1e-6)
    assert torch.all(model.head.weight == 0)
