"""A wrong image size or channel count: the error names the constructor argument that differs, with its value."""
import pytest
import torch

import sparsevision


@pytest.mark.parametrize("name", ["vit_tiny_test", "mixer_tiny_test", "vmoe_tiny_test"])
@pytest.mark.parametrize("shape, fix", [
    ((2, 1, 32, 32), r"create_model\(name, in_chans=1\)"),
    ((2, 3, 64, 64), r"create_model\(name, img_size=64\)"),
    ((2, 3, 32, 48), r"create_model\(name, img_size=\(32, 48\)\)"),
    ((2, 4, 16, 16), r"create_model\(name, in_chans=4, img_size=16\)"),
    ((3, 32, 32), r"pass a batch of images \[B, C, H, W\] \(one image: x\[None\]\)"),
])
def test_wrong_input_names_the_argument(name, shape, fix):
    model = sparsevision.create_model(name)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\), got .*; .*" + fix):
        model(torch.zeros(shape))


@pytest.mark.parametrize("overrides, message", [
    ({"num_classes": "abc"}, "num_classes must be an int >= 0, got 'abc'"),
    ({"num_classes": -1}, "num_classes must be an int >= 0, got -1"),
    ({"depth": 0}, "depth must be an int >= 1, got 0"),
    ({"img_size": "abc"}, r"img_size must be a positive int or an \(H, W\) pair of them, got 'abc'"),
    ({"img_size": [32, 0]}, r"img_size must be a positive int or an \(H, W\) pair"),
])
def test_bad_sizes_are_named_before_construction(overrides, message):
    with pytest.raises(ValueError, match="bad arguments for model 'vit_tiny_test': " + message):
        sparsevision.create_model("vit_tiny_test", **overrides)


def test_good_sizes_in_either_form_build():
    assert sparsevision.create_model("vit_tiny_test", img_size=[32, 32], num_classes=0).num_features == 32
