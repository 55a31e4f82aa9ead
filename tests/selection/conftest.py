"""Three checkpoints of known, different quality on digits, built once per test session (~4 s):

* "trained": a run directory of vit_tiny_test trained 100 steps on digits (`sparsevision.train.train`);
* "noisy.safetensors": the trained weights with Gaussian noise of one standard deviation of each tensor added,
  which destroys much of what training learnt;
* "untrained.safetensors": a freshly initialised vit_tiny_test.

The two files carry the model name in their metadata, as `sparsevision convert` writes them, so `load_model`
rebuilds them without a run directory.
"""
import copy
import dataclasses
import json

import pytest
import torch

from sparsevision import create_model
from sparsevision.models.loading import load_model
from sparsevision.train import apply_overrides, get_preset, save_model_weights, train


@pytest.fixture(scope="session")
def quality_pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    config = apply_overrides(get_preset("test"), ["steps=100", "eval_every=0", "checkpoint_every=0",
                                                  "log_every=50", "data.batch_size=128", "optim.lr=0.01",
                                                  "optim.warmup_steps=5"])
    config = dataclasses.replace(config, out_dir=str(root / "trained"))
    train(config, progress=False)
    trained, name = load_model(str(root / "trained"))
    meta = {"model": name, "overrides": json.dumps(dict(config.model.overrides, num_classes=10, img_size=32))}
    noisy = copy.deepcopy(trained)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in noisy.parameters():
            if param.numel() > 1:
                param.add_(param.std() * torch.randn(param.shape, generator=generator))
    save_model_weights(noisy, root / "noisy.safetensors", meta)
    torch.manual_seed(1)
    save_model_weights(create_model(name, num_classes=10, img_size=32), root / "untrained.safetensors", meta)
    return {"trained": str(root / "trained"), "noisy.safetensors": str(root / "noisy.safetensors"),
            "untrained.safetensors": str(root / "untrained.safetensors")}
