"""model.init_from: a run starts from given weights (e.g. an upcycled V-MoE) instead of a random init."""
import pytest

from sparsevision.train import train


def test_starting_from_a_run_reproduces_its_model(tiny_config):
    first = train(tiny_config("first", sets=["eval_every=0"]), progress=False)
    # With a zero learning rate (AdamW's decay is lr-scaled) the second run keeps the loaded weights, so its test
    # metrics are the first run's final ones; a random init would be at chance.
    second = train(tiny_config("second", sets=[f"model.init_from={first.run_dir}", "optim.lr=0", "steps=3",
                                               "eval_every=0"]), progress=False)
    assert second.test["loss"] == pytest.approx(first.test["loss"], rel=1e-6)
    assert second.test["accuracy"] == first.test["accuracy"]


def test_weights_that_do_not_fit_are_named(tiny_config):
    first = train(tiny_config("dense", sets=["steps=3", "eval_every=0"]), progress=False)
    with pytest.raises(ValueError, match="do not match"):
        train(tiny_config("moe", sets=["model.name=vmoe_tiny_test", f"model.init_from={first.run_dir}",
                                       "steps=3", "eval_every=0"]), progress=False)


def test_upcycle_a_dense_run_and_train_on(tiny_config, tmp_path):
    # Sparse Upcycling end to end: dense run -> `convert --upcycle` (every expert = the dense MLP) -> training.
    from safetensors.torch import load_file

    from sparsevision.cli import main
    from sparsevision.train.checkpoint import resolve_weights

    dense = train(tiny_config("dense", sets=["steps=3", "eval_every=0"]), progress=False)
    upcycled = tmp_path / "upcycled.safetensors"
    assert main(["convert", str(dense.run_dir), str(upcycled), "--model", "vmoe_tiny_test", "--upcycle",
                 "--set", "pool=gap", "--set", "representation_size=null", "--set", "depth=2"]) == 0
    dense_state, moe_state = load_file(str(resolve_weights(dense.run_dir))), load_file(str(upcycled))
    for block in (1,):  # the MoE block of a 2-block vmoe_tiny_test ("every-2")
        experts = moe_state[f"blocks.{block}.mlp.experts.fc1_weight"]  # [E, D, H]
        for e in range(experts.shape[0]):
            assert (experts[e] == dense_state[f"blocks.{block}.mlp.fc1.weight"].T).all()
    assert (moe_state["blocks.0.mlp.fc1.weight"] == dense_state["blocks.0.mlp.fc1.weight"]).all()
    result = train(tiny_config("moe", sets=["model.name=vmoe_tiny_test", "model.overrides.pool=gap",
                                            "model.overrides.representation_size=null", "model.overrides.depth=2",
                                            f"model.init_from={upcycled}", "optim.lr=0", "steps=3",
                                            "eval_every=0"]), progress=False)
    # The run's test loss is the upcycled file's own: evaluate the file directly.
    import torch

    from sparsevision.data import build_dataset, materialize
    from sparsevision.models.loading import load_model

    model, _ = load_model(str(upcycled))
    images, labels = materialize(build_dataset("digits", split="test", image_size=32))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(images), labels).item()
    assert result.test["task_loss"] == pytest.approx(expected, rel=1e-5)
