"""A model moved to a new resolution: position tables resampled as the official scipy zoom, outputs as rebuilt."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from sparsevision import create_model
from sparsevision.transfer import model_image_size, with_resolution


def test_learned_table_matches_scipy_zoom_and_keeps_the_class_token():
    torch.manual_seed(0)
    model = create_model("vmoe_tiny_test").eval()  # token pooling: one class-token row
    moved = with_resolution(model, 48)
    assert model_image_size(moved) == 48 and model_image_size(model) == 32  # the original is untouched
    old = model.pos_embed.detach()[0].numpy().astype(np.float64)
    grid = old[1:].reshape(4, 4, -1)
    expected = ndimage.zoom(grid, (6 / 4, 6 / 4, 1), order=1).reshape(36, -1)
    new = moved.pos_embed.detach()[0].numpy()
    assert new.shape == (37, old.shape[1])
    np.testing.assert_allclose(new[1:], expected, atol=1e-5)
    np.testing.assert_array_equal(new[0], old[0])


def test_moved_model_equals_a_model_built_at_the_new_size():
    torch.manual_seed(0)
    model = create_model("vit_tiny_test").eval()
    with torch.no_grad():
        model.pos_embed.fill_(0.3)  # an all-constant grid resamples to the same constant
    built = create_model("vit_tiny_test", img_size=64).eval()
    state = model.state_dict()
    state["pos_embed"] = torch.full((1, 64, model.width), 0.3)
    built.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(with_resolution(model, 64)(x), built(x), atol=1e-6, rtol=1e-5)


def test_sincos_table_is_recomputed():
    model = create_model("vit_tiny_test", pos_embed="sincos2d").eval()
    built = create_model("vit_tiny_test", pos_embed="sincos2d", img_size=48).eval()
    built.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(with_resolution(model, 48)(x), built(x))


def test_mixer_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot change resolution"):
        with_resolution(create_model("mixer_tiny_test"), 48)
    mixer = create_model("mixer_tiny_test")
    assert with_resolution(mixer, 32) is mixer
    with pytest.raises(ValueError, match="multiple of the patch size"):
        with_resolution(create_model("vit_tiny_test"), 36)
