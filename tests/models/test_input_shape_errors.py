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
