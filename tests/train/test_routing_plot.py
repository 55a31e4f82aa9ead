"""V-MoE runs end with the routing heat map of the validation images (V-MoE Fig. 7); dense runs do not."""
import json
from pathlib import Path

import numpy as np

from sparsevision.data import build_dataset
from sparsevision.train import train


def test_moe_run_writes_the_routing_heat_map(tiny_config):
    config = tiny_config(sets=["model.name=vmoe_tiny_test", "steps=4", "eval_every=0", "checkpoint_every=0",
                               "objective_args.routing_examples=40"])
    result = train(config, progress=False)
    run = Path(result.run_dir)
    assert (run / "routing.png").stat().st_size > 0
    payload = json.loads((run / "routing.json").read_text())
    counts = np.array(payload["counts_expert_by_class"])  # [layers, experts, classes]
    assert counts.shape == (2, 4, 10)
    # Each image contributes at most its 16 patches (class token excluded) to its class's column; with the eval
    # capacity factor few first choices are dropped.
    labels = np.array([build_dataset("digits", split="val", image_size=32)[i][1] for i in range(40)])
    per_class = np.bincount(labels, minlength=10) * 16
    assert (counts.sum(1) <= per_class).all()
    assert counts.sum() >= 0.8 * 2 * 40 * 16


def test_dense_run_writes_no_routing_heat_map(tiny_config):
    result = train(tiny_config(sets=["steps=3", "eval_every=0", "checkpoint_every=0"]), progress=False)
    assert not (Path(result.run_dir) / "routing.png").exists()
