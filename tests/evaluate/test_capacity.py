import argparse
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sparsevision.evaluate import cli
from sparsevision.evaluate.capacity import evaluate_capacity_factors
from sparsevision.models import create_model
from sparsevision.models import vmoe  # noqa: F401  (registers the MoE models)
from sparsevision.train.checkpoint import save_checkpoint
from sparsevision.train.config import ModelConfig, TrainConfig, config_to_dict


def trained_like_model(seed=0):
    torch.manual_seed(seed)
    model = create_model("vmoe_tiny_test", head_zero_init=False)
    with torch.no_grad():  # sharper routers, so that buffers overflow at small capacity
        for m in model.moe_mlps():
            m.router.gate.weight.mul_(4)
    return model


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def first_choice_drops(model, images, factor):
    """Independent count of dropped 1st+2nd choices with BPR: per image and expert, the kept choices are the
    `capacity` highest-priority ones (all 1st choices by descending top gate, then all 2nd choices)."""
    model.eval()
    model.set_capacity_factor(eval=factor)  # the earlier layers' drops shape the later layers' inputs
    model.set_batch_priority(True)
    tokens, k, e = 17, 2, 4
    c = math.ceil(tokens * k * factor / e)
    capacity = c + (-c) % 4
    fractions = []
    with torch.no_grad():
        h = model.embed(images)
        for block in model.blocks:
            if block.mlp.__class__.__name__ == "MoeMlp":
                x = block.norm2(h + block.attn(block.norm1(h)))
                gates = (x @ block.mlp.router.gate.weight.T).softmax(-1).double().numpy()
                dropped = 0
                for img in range(gates.shape[0]):
                    top = np.argsort(-gates[img], axis=-1, kind="stable")[:, :k]
                    order = np.argsort(-gates[img].max(-1), kind="stable")
                    fill = np.zeros(e, dtype=int)
                    for choice in range(k):
                        for t in order:
                            ex = top[t, choice]
                            if fill[ex] < capacity:
                                fill[ex] += 1
                            else:
                                dropped += 1
                fractions.append(dropped / (gates.shape[0] * tokens * k))
            h, _ = block(h)
    model.set_batch_priority(False)
    return float(np.mean(fractions))


def test_accuracy_and_drops_per_capacity_factor():
    model = trained_like_model()
    images, labels = data()
    factors = [0.25, 1.0, 4.0]
    results = evaluate_capacity_factors(model, (images, labels), factors, batch_size=5)
    assert [r.capacity_factor for r in results] == factors and all(r.num_examples == 12 for r in results)
    for r in results:
        assert r.dropped_fraction == pytest.approx(first_choice_drops(model, images, r.capacity_factor), abs=1e-6)
        model.set_capacity_factor(eval=r.capacity_factor)
        model.set_batch_priority(True)
        acc = float((model(images).argmax(-1) == labels).float().mean())
        model.set_batch_priority(False)
        assert r.accuracy == pytest.approx(acc)
    assert results[0].dropped_fraction > 0.1 and results[-1].dropped_fraction == 0.0
    drops = [r.dropped_fraction for r in results]
    assert drops == sorted(drops, reverse=True)


def test_settings_restored_and_errors():
    model = trained_like_model().train()
    model.set_capacity_factor(eval=1.5)
    evaluate_capacity_factors(model, data(4), [0.5], batch_size=4)
    assert model.training
    assert all(m.router.eval_capacity_factor == 1.5 and not m.router.batch_priority for m in model.moe_mlps())
    with pytest.raises(ValueError, match="no MoE layer"):
        evaluate_capacity_factors(create_model("vit_tiny_test"), data(4), [1.0])
    with pytest.raises(ValueError, match="soft routing"):
        evaluate_capacity_factors(create_model("soft_moe_tiny_test"), data(4), [1.0])
    with pytest.raises(ValueError, match=r"> 0, got \[0.0\]"):
        evaluate_capacity_factors(model, data(4), [1.0, 0.0])


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args([str(a) for a in argv]))


def test_cli_on_a_run_directory(tmp_path, capsys):
    model = trained_like_model()
    config = config_to_dict(TrainConfig(model=ModelConfig("vmoe_tiny_test", {"num_classes": 10, "img_size": 32})))
    save_checkpoint(tmp_path / "run", 5, model, {}, config)
    assert run_cli("--model", tmp_path / "run", "--data", "digits", "--capacity-factors", "0.5,2",
                   "--max-examples", "16", "--batch-size", "8") == 0
    out = capsys.readouterr().out
    assert "vmoe_tiny_test on digits/test (16 examples, BPR on)" in out
    report = json.loads((tmp_path / "run" / "eval" / "capacity_digits_test.json").read_text())
    assert [r["capacity_factor"] for r in report["results"]] == [0.5, 2.0] and report["batch_priority"] is True
    assert (tmp_path / "run" / "eval" / "capacity_digits_test.png").stat().st_size > 0


def test_cli_on_converted_weights_and_names(tmp_path, capsys):
    model = trained_like_model()
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path), metadata={"format": "pt", "model": "vmoe_tiny_test", "overrides": "{}"})
    run_cli("--model", path, "--data", "digits", "--capacity-factors", "1", "--max-examples", "4",
            "--out", tmp_path / "o", "--no-bpr")
    assert "BPR off" in capsys.readouterr().out
    plain = tmp_path / "plain.safetensors"
    save_file(model.state_dict(), str(plain))
    run_cli("--model", "vmoe_tiny_test", "--weights", plain, "--data", "digits", "--capacity-factors", "1",
            "--max-examples", "4", "--out", tmp_path / "o2")
    assert (tmp_path / "o2" / "capacity_digits_test.json").exists()
    with pytest.raises(FileNotFoundError, match="no model name in its metadata"):
        run_cli("--model", plain, "--data", "digits")
    with pytest.raises(FileNotFoundError, match="--weights"):
        run_cli("--model", "vmoe_tiny_test", "--data", "digits")
    with pytest.raises(ValueError, match="positive numbers"):
        run_cli("--model", path, "--data", "digits", "--capacity-factors", "1,-1")
    with pytest.raises(ValueError, match="has 10 classes but the model's head has 3"):
        small = create_model("vmoe_tiny_test", num_classes=3)
        save_file(small.state_dict(), str(tmp_path / "s.safetensors"),
                  metadata={"model": "vmoe_tiny_test", "overrides": '{"num_classes": 3}'})
        run_cli("--model", tmp_path / "s.safetensors", "--data", "digits")
