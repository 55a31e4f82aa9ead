"""Contrastive training through the train loop: a tiny LIMoE learns zero-shot digit classification from captions
well above chance; two-tower presets run; the modality plot; objective details."""
import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from sparsevision.data.captions import CaptionDataset
from sparsevision.evaluate import zeroshot_cli
from sparsevision.evaluate.zeroshot import zeroshot_classify
from sparsevision.train import apply_overrides, get_preset, load_checkpoint_model, train
from sparsevision.train.contrastive import (MODALITY_PLOT, ContrastiveObjective, modality_counts,
                                            plot_modality_experts)


def test_limoe_tiny_learns_zero_shot_digits(tmp_path):
    # The limoe-tiny preset at the test size (width 32, 2 blocks, MoE in block 1), 80 steps of batch 32 on
    # captioned digits (10 classes, chance 0.1); seeds 0 and 1 reach 0.42 and 0.30.
    sets = ["model.overrides.width=32", "model.overrides.depth=2", "model.overrides.num_heads=2",
            "model.overrides.mlp_dim=64", "model.overrides.moe_layers=[1]", "data.batch_size=32", "optim.lr=5e-3",
            "optim.schedule=constant"]
    config = dataclasses.replace(apply_overrides(get_preset("limoe-tiny"), sets), steps=80, eval_every=0,
                                 checkpoint_every=0, log_every=20, out_dir=str(tmp_path))
    objective = ContrastiveObjective()
    result = train(config, objective=objective, progress=False)
    assert result.test["zeroshot_accuracy"] > 0.2, result.test  # 2x chance; chance + 6 sd at n=360
    assert result.test["loss"] < np.log(config.data.eval_batch_size)  # below the loss of uninformative embeddings
    assert {"entropy/image_local", "entropy/text_global", "moe/importance_loss"} <= set(result.test)

    # The same accuracy, recomputed from the saved checkpoint by the stand-alone zero-shot evaluator.
    model, _ = load_checkpoint_model(tmp_path)
    test = CaptionDataset("digits", "test", image_size=32)
    standalone = zeroshot_classify(model, test)
    assert standalone["accuracy"] == pytest.approx(result.test["zeroshot_accuracy"], abs=1e-6)
    assert standalone["chance"] == pytest.approx(0.1)

    # The `sparsevision zeroshot` sub-command prints and writes the same number.
    parser = argparse.ArgumentParser()
    zeroshot_cli.add_arguments(parser)
    out = tmp_path / "zs.json"
    args = parser.parse_args(["--model", str(tmp_path), "--data", "digits", "--retrieval", "--max-examples", "100",
                              "--out", str(out)])
    assert zeroshot_cli.run(args) == 0
    written = json.loads(out.read_text())
    assert written["num_examples"] == 100 and written["chance"] == pytest.approx(0.1)
    assert written["accuracy"] == pytest.approx(zeroshot_classify(model, test, max_examples=100)["accuracy"])
    assert 0 <= written["retrieval"]["t2i_recall@5"] <= 1 and written["retrieval"]["num_pairs"] == 100

    # Modality plot at the end of the run: counts cover every routed real token.
    path = objective.on_train_end(model, tmp_path)
    assert path == tmp_path / MODALITY_PLOT and path.stat().st_size > 1000
    counts = json.loads((tmp_path / "modality_experts.json").read_text())
    assert np.asarray(counts["image"]).shape == (1, 4)
    assert 0 < np.sum(counts["image"]) <= 512 * 16  # at most every image token of 512 val examples


@pytest.mark.parametrize("preset", ["clip-tiny", "siglip-tiny"])
def test_two_tower_presets_run(tmp_path, preset):
    config = apply_overrides(get_preset(preset), ["data.batch_size=16", "optim.warmup_steps=1"])
    small = {**config.model.overrides, "image_overrides": {}}  # the test-sized ViT tower, for speed
    config = dataclasses.replace(config, steps=3, eval_every=0, checkpoint_every=0, log_every=1,
                                 out_dir=str(tmp_path), model=dataclasses.replace(config.model, overrides=small))
    result = train(config, progress=False)
    assert np.isfinite(result.test["loss"]) and 0 <= result.test["zeroshot_accuracy"] <= 1
    model, saved = load_checkpoint_model(tmp_path)
    assert model.loss_kind == ("sigmoid" if preset == "siglip-tiny" else "softmax")
    assert ContrastiveObjective().on_train_end(model, tmp_path) is None  # no run data seen by a fresh objective


def test_modality_counts_and_plot(tmp_path):
    class Model(torch.nn.Module):
        """Reports fixed per-expert counts: every batch adds the same."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images, tokens):
            counts = {"image": torch.tensor([[3, 1, 0]]), "text": torch.tensor([[1, 1, 0]])}
            return None, None, {"expert_counts": counts}

    data = [(torch.zeros(3, 2, 2), torch.zeros(4, dtype=torch.long), 0)] * 5
    counts = modality_counts(Model(), data, max_examples=5, batch_size=2)  # 3 batches
    assert counts["image"].tolist() == [[9, 3, 0]] and counts["text"].tolist() == [[3, 3, 0]]
    path = plot_modality_experts(counts, tmp_path / "m.png", normalize_modalities=True)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="same shape"):
        plot_modality_experts({"image": [1, 2], "text": [1, 2, 3]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_modality_experts({"image": [-1, 2]}, tmp_path / "x.png")


def test_objective_rejects_non_image_text_models(tmp_path):
    config = dataclasses.replace(get_preset("limoe-tiny"), model=dataclasses.replace(
        get_preset("limoe-tiny").model, name="vit_tiny_test", overrides={}), out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="image-text model"):
        ContrastiveObjective().build_dataset(config, "train")
