import pytest
import torch

import sparsevision
from sparsevision.layers import PatchMerger, resample_pos_embed, sincos_2d_pos_embed


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def build_meta(name, **kwargs):
    with torch.device("meta"):
        return sparsevision.create_model(name, **kwargs)


@pytest.mark.parametrize(
    "name, expected",
    [
        # ViT paper Table 1 / timm: ViT-B/16 with class token and a 1000-way head has 86,567,656 parameters.
        ("vit_b16", 86_567_656),
        # MLP-Mixer paper: Mixer-B/16 has 59.9M parameters (timm: 59,880,472).
        ("mixer_b16", 59_880_472),
    ],
)
def test_paper_parameter_counts(name, expected):
    assert count_params(build_meta(name, num_classes=1000, img_size=224)) == expected


def test_vit_b16_count_from_formula():
    # Independent count from the architecture: patch conv + cls + pos + 12 blocks + final norm + head.
    d, mlp, layers, patches, classes = 768, 3072, 12, 196, 1000
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    total = (3 * 16 * 16 * d + d) + d + (patches + 1) * d + layers * block + 2 * d + (d * classes + classes)
    assert count_params(build_meta("vit_b16")) == total


def test_list_models_contains_required_names():
    names = sparsevision.list_models()
    for required in ["vit_ti16", "vit_s16", "vit_b16", "vit_tiny_test", "mixer_s16", "mixer_b16", "mixer_tiny_test"]:
        assert required in names
    assert sparsevision.list_models("mixer_*") == [n for n in names if n.startswith("mixer_")]


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="vit_b16"):
        sparsevision.create_model("vit_b61")


@pytest.mark.parametrize("name", ["vit_tiny_test", "mixer_tiny_test"])
def test_forward_split_and_shapes(name):
    torch.manual_seed(0)
    model = sparsevision.create_model(name, num_classes=7, head_zero_init=False).eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape[0] == 3 and features.shape[-1] == model.width
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (3, model.num_features)
    logits = model(x)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(model.forward_head(features), logits)
    logits2, aux = model(x, return_aux=True)
    torch.testing.assert_close(logits2, logits)
    assert float(aux["aux_loss"]) == 0.0 and aux["moe"] == []


@pytest.mark.parametrize("pool, tokens", [("token", 17), ("gap", 16)])
def test_vit_pooling_and_sizes(pool, tokens):
    model = sparsevision.create_model("vit_tiny_test", pool=pool, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, tokens, 32)
    expected = features[:, 0] if pool == "token" else features.mean(1)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), expected)


def test_wrong_image_size_or_channels_named():
    model = sparsevision.create_model("vit_tiny_test")
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\).*\(2, 3, 64, 64\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="pool"):
        sparsevision.create_model("vit_tiny_test", pool="max")
    with pytest.raises(ValueError, match="divisible"):
        sparsevision.create_model("vit_tiny_test", patch_size=5)
    with pytest.raises(TypeError, match="vit_tiny_test"):
        sparsevision.create_model("vit_tiny_test", not_an_argument=1)


def test_sincos_table_matches_formula():
    table = sincos_2d_pos_embed(3, 4, 8)[0].double()
    omega = 1.0 / 10_000 ** (torch.arange(2, dtype=torch.float64) / 1)
    for row in range(3):
        for col in range(4):
            expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
            torch.testing.assert_close(table[row * 4 + col], expected, atol=1e-6, rtol=0)


def test_resample_pos_embed_keeps_prefix_and_constant_fields():
    prefix = torch.randn(1, 1, 4)
    grid = torch.full((1, 9, 4), 2.5)
    out = resample_pos_embed(torch.cat([prefix, grid], 1), (5, 5), num_prefix_tokens=1)
    assert out.shape == (1, 26, 4)
    torch.testing.assert_close(out[:, :1], prefix)
    torch.testing.assert_close(out[:, 1:], torch.full((1, 25, 4), 2.5))


def test_patch_merger_is_a_convex_combination():
    torch.manual_seed(0)
    merger = PatchMerger(dim=8, num_output_tokens=3)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    merger = merger.double()
    weights = merger.merge_weights(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    out = merger(x)
    # Reference: explicit loop over outputs, softmax over tokens of query . layernorm(token).
    normed = torch.nn.functional.layer_norm(x, (8,), merger.norm.weight, merger.norm.bias)
    for b in range(2):
        for m in range(3):
            scores = torch.stack([merger.queries[m] @ normed[b, n] for n in range(10)])
            w = torch.exp(scores - scores.max()) / torch.exp(scores - scores.max()).sum()
            torch.testing.assert_close(out[b, m], (w[:, None] * x[b]).sum(0))


def test_vit_with_patch_merger_reduces_tokens():
    model = sparsevision.create_model("vit_tiny_test", depth=4, patch_merger_after=1, patch_merger_tokens=4)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32)
    with pytest.raises(ValueError, match="gap"):
        sparsevision.create_model("vit_tiny_test", pool="token", patch_merger_after=0)


def test_resample_pos_embed_matches_scipy_zoom():
    # The official resample_posemb / interpolate_posembed use scipy.ndimage.zoom(order=1) on the grid.
    from scipy.ndimage import zoom

    torch.manual_seed(0)
    table = torch.randn(1, 1 + 16, 6, dtype=torch.float64)
    out = resample_pos_embed(table, (7, 7), num_prefix_tokens=1)
    expected = zoom(table[0, 1:].reshape(4, 4, 6).numpy(), (7 / 4, 7 / 4, 1), order=1).reshape(49, 6)
    torch.testing.assert_close(out[0, 1:], torch.from_numpy(expected), atol=1e-10, rtol=0)
