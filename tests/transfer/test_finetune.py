"""Fine-tuning and the linear probe: heads, errors, aux loss, determinism, and accuracy against scikit-learn."""
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch.utils.data import Subset

from sparsevision import create_model
from sparsevision.data import build_dataset
from sparsevision.train import NonFiniteLossError, load_checkpoint_model
from sparsevision.transfer import (FinetuneConfig, extract_features, finetune, hyperrule, predict_logits,
                                   replace_head)


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", "train", 32), build_dataset("digits", "val", 32)


def small(ds, n):
    subset = Subset(ds, range(n))
    subset.num_classes = ds.num_classes
    return subset


def quick(**changes):
    fields = dict(steps=4, warmup_steps=1, lr_boundaries=(2,), batch_size=32, lr=0.01, flip=False)
    fields.update(changes)
    return FinetuneConfig(**fields)


def test_replace_head_shapes_and_zero_init():
    model = create_model("vmoe_tiny_test")
    assert replace_head(model, 7) is model
    assert (model.head.weight.shape, model.head.bias.shape, model.num_classes) == ((7, 32), (7,), 7)
    assert not model.head.weight.any() and not model.head.bias.any()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    replace_head(model, 3, zero_init=False)
    assert model.head.weight.abs().sum() > 0
    headless = create_model("vit_tiny_test", num_classes=0)
    assert replace_head(headless, 4)(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(model, 0)


def test_bad_inputs_are_named(digits):
    train, val = small(digits[0], 64), small(digits[1], 32)
    model = create_model("vit_tiny_test")
    with pytest.raises(ValueError, match="unknown mode 'full'"):
        finetune(model, train, val, num_classes=10, config=quick(), mode="full", progress=False)
    with pytest.raises(ValueError, match=r"head has 10 outputs.*replace_head\(model, 5\)"):
        finetune(model, train, val, num_classes=5, config=quick(), progress=False)
    with pytest.raises(ValueError, match="train dataset has 10 classes"):
        finetune(replace_head(create_model("vit_tiny_test"), 5), train, val, num_classes=5, config=quick(),
                 progress=False)
    with pytest.raises(ValueError, match="cannot change resolution"):
        finetune(create_model("mixer_tiny_test"), train, val, num_classes=10, config=quick(crop=48, resize=48),
                 progress=False)


@pytest.mark.parametrize("name", ["vit_tiny_test", "vmoe_tiny_test", "soft_moe_tiny_test", "mixer_tiny_test"])
def test_every_family_fine_tunes(name, digits):
    model = create_model(name)
    result = finetune(model, small(digits[0], 64), small(digits[1], 32), num_classes=10,
                      config=quick(steps=2, lr_boundaries=()), progress=False)
    assert result.model is not model and not result.model.training
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.model.head.weight.abs().sum() > 0 and not model.head.weight.any()  # the input is untouched


def test_vmoe_aux_loss_is_added(digits):
    train = small(digits[0], 64)
    model = create_model("vmoe_tiny_test", head_bias_init=0.0)  # zero head: the first CE is exactly log(10)
    losses = {}
    for weight in (0.0, 1.0):
        result = finetune(model, train, None, num_classes=10, config=quick(steps=1, lr_boundaries=(),
                          aux_loss_weight=weight), progress=False, log_every=1)
        losses[weight] = result.history[0]["loss"]
    assert losses[0.0] == pytest.approx(math.log(10), abs=1e-5)
    assert 1e-4 < losses[1.0] - math.log(10) < 1.0  # importance + load losses, weighted 0.005 each


def test_new_resolution_and_mixup_run(digits):
    result = finetune(create_model("vmoe_tiny_test"), small(digits[0], 32), small(digits[1], 16), num_classes=10,
                      config=quick(steps=2, lr_boundaries=(), crop=48, resize=56, mixup_alpha=0.1, flip=True),
                      progress=False)
    assert result.img_size == 48 and result.config.resize == 56
    logits, labels = predict_logits(result.model, small(digits[1], 16), progress=False)  # 32 px in, resized
    assert logits.shape == (16, 10) and labels.shape == (16,)


def test_same_seed_same_weights(digits):
    train = small(digits[0], 64)
    config = quick(steps=3, mixup_alpha=0.2, flip=True, resize=36, crop=32)
    model = create_model("vit_tiny_test", dropout=0.1)  # dropout draws from the seeded generator too
    runs = [finetune(model, train, None, num_classes=10, config=config.replace(seed=s),
                     progress=False).model.state_dict() for s in (0, 0, 1)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_nan_loss_is_a_clear_error(digits):
    model = create_model("vit_tiny_test")
    with torch.no_grad():
        model.patch_embed.proj.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 1"):
        finetune(model, small(digits[0], 32), None, num_classes=10, config=quick(), progress=False)


def test_finetune_and_linear_probe_from_a_pretrained_model(pretrained_run, digits):
    pretrained, _ = load_checkpoint_model(pretrained_run)
    train, val = digits
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    linear = finetune(replace_head(pretrained, 10), train, val, num_classes=10, mode="linear", progress=False,
                      config=hyperrule(len(train), linear_l2_grid=(1e-3,)))
    # The backbone is bit-identical, only the head changed.
    for key, value in linear.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, before[key]), key
    # Oracle: scikit-learn's multinomial logistic regression with the same penalty on the same features.
    x_train, y_train = extract_features(pretrained, train, progress=False)
    x_val, y_val = extract_features(pretrained, val, progress=False)
    oracle = LogisticRegression(C=1.0 / (len(y_train) * 1e-3), max_iter=5000, tol=1e-8)
    oracle.fit(x_train.double().numpy(), y_train.numpy())
    ours = torch.softmax(predict_logits(linear.model, val, progress=False)[0].double(), 1).numpy()
    np.testing.assert_allclose(ours, oracle.predict_proba(x_val.double().numpy()), atol=2e-3)
    assert abs(linear.val_accuracy - oracle.score(x_val.numpy(), y_val.numpy())) <= 0.02

    tuned = finetune(pretrained, small(train, 640), val, num_classes=10, progress=False,
                     config=hyperrule(640, steps_scale=40 / 500, batch_size=64, lr=0.03, flip=False))
    assert tuned.config.steps == 40 and tuned.val_accuracy > 0.3  # chance is 0.1
    assert linear.val_accuracy > 0.3


def test_linear_probe_without_val_uses_the_middle_l2(digits):
    model = create_model("vit_tiny_test")
    result = finetune(model, small(digits[0], 128), None, num_classes=10, mode="linear", progress=False,
                      config=quick())
    assert result.linear_l2 == 1e-3 and result.val_accuracy is None and len(result.linear_search) == 1
