"""Schedules against their formulas (through the lr the loop logs), weight-decay masks, and what AdamW decays."""
import math

import pytest
import torch

from sparsevision import create_model
from sparsevision.train import build_optimizer, learning_rate, read_metrics, train
from sparsevision.train.config import OptimConfig
from sparsevision.train.optim import decay_mask


def test_cosine_with_warmup_and_floor_by_hand():
    o = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr=0.1)
    total = 110  # decay runs over steps 10..110, so step 60 is half way
    assert learning_rate(0, o, total) == 0.0  # big_vision: the warmup ramp starts at 0
    assert learning_rate(5, o, total) == pytest.approx(0.5)
    assert learning_rate(10, o, total) == pytest.approx(1.0)
    assert learning_rate(35, o, total) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(60, o, total) == pytest.approx(0.55)
    assert learning_rate(110, o, total) == pytest.approx(0.1)
    assert learning_rate(500, o, total) == pytest.approx(0.1)


def test_linear_constant_and_step_by_hand():
    lin = OptimConfig(lr=2.0, warmup_steps=0, schedule="linear", min_lr=0.0)
    assert [learning_rate(s, lin, 100) for s in (0, 25, 100)] == pytest.approx([2.0, 1.5, 0.0])
    const = OptimConfig(lr=0.3, warmup_steps=4, schedule="constant")
    assert [learning_rate(s, const, 100) for s in (1, 4, 99)] == pytest.approx([0.075, 0.3, 0.3])
    stair = OptimConfig(lr=1.0, schedule="step", step_boundaries=(30, 70), step_factor=0.1)
    assert [learning_rate(s, stair, 100) for s in (0, 29, 30, 69, 70, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_the_loop_applies_the_schedule(tiny_config):
    config = tiny_config(sets=["log_every=1", "optim.lr=0.01", "optim.warmup_steps=3", "optim.min_lr=0.001"])
    train(config, progress=False)
    logged = {r["step"]: r["lr"] for r in read_metrics(config.out_dir) if r["split"] == "train"}
    n = config.steps
    for step in range(1, n + 1):
        t = step - 1  # the update index of step `step`
        expected = 0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (t - 3) / (n - 3)))))
        expected *= min(1.0, t / 3)
        assert logged[step] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_decay_mask_keeps_kernels_only():
    model = create_model("vit_tiny_test", pool="token")
    mask = decay_mask(model)
    for name in ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                 "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc2.weight", "head.weight"]:
        assert mask[name], name
    for name in ["pos_embed", "cls_token", "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
                 "norm.weight", "head.bias", "blocks.0.mlp.fc1.bias"]:
        assert not mask[name], name
    from sparsevision.moe.experts import Experts

    experts = decay_mask(Experts(num_experts=4, dim=8, hidden_dim=16))
    assert experts == {"fc1_weight": True, "fc1_bias": False, "fc2_weight": True, "fc2_bias": False}


def test_adamw_decays_only_masked_parameters():
    # With zero gradients Adam's update is 0, so one step leaves exactly the decoupled decay p <- p (1 - lr wd).
    model = create_model("vit_tiny_test", pool="token", head_zero_init=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    mask = decay_mask(model)
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if mask[name] else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


def test_sgd_uses_momentum():
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.data.fill_(1.0)
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0))
    for _ in range(2):
        model.weight.grad = torch.ones_like(model.weight)
        opt.step()
    # v1 = g, v2 = 0.9 g + g: w = 1 - 0.1 * (1 + 1.9)
    torch.testing.assert_close(model.weight.data, torch.full((1, 2), 1 - 0.1 * 2.9))
