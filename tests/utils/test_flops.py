import torch

import sparsevision
from sparsevision.utils.flops import count_flops


def vit_flops_by_hand(tokens_per_block, width, mlp_dim, patch_flops, head_flops, merger_flops=0):
    """2 x multiply-adds of every matmul in the encoder, one entry of tokens_per_block per block."""
    total = patch_flops + head_flops + merger_flops
    for n in tokens_per_block:
        total += 2 * n * width * 3 * width  # qkv projection
        total += 2 * 2 * n * n * width  # QK^T and attention-weighted sum of V
        total += 2 * n * width * width  # output projection
        total += 2 * 2 * n * width * mlp_dim  # the two MLP layers
    return total


def test_vit_flops_match_hand_count():
    model = sparsevision.create_model("vit_tiny_test", depth=4, num_classes=10)
    width, mlp, patches = 32, 64, 16
    expected = vit_flops_by_hand([patches] * 4, width, mlp, 2 * patches * 3 * 8 * 8 * width, 2 * width * 10)
    assert count_flops(model) == expected


def test_vit_b16_matches_paper_gflops():
    # ViT paper / DeiT quote 17.6 GFLOPs (multiply-adds) for ViT-B/16 at 224px.
    gmacs = count_flops(sparsevision.create_model("vit_b16")) / 2e9
    assert 17.5 < gmacs < 17.65


def test_patch_merger_saving_is_counted():
    dense = sparsevision.create_model("vit_tiny_test", depth=4)
    merged = sparsevision.create_model("vit_tiny_test", depth=4, patch_merger_after=1, patch_merger_tokens=4)
    width, mlp, patches = 32, 64, 16
    expected = vit_flops_by_hand(
        [patches, patches, 4, 4], width, mlp,
        2 * patches * 3 * 8 * 8 * width, 2 * width * 10,
        merger_flops=2 * 4 * patches * width * 2,  # query scores and the weighted sum
    )
    assert count_flops(merged) == expected
    assert count_flops(merged) < count_flops(dense)


def test_patch_merger_presets_follow_the_paper_placement():
    # 64px keeps the test fast: 16 patches merged into 8 after the 6th of 12 blocks.
    for name in ("vit_b16_pm", "vmoe_b16_pm"):
        model = sparsevision.create_model(name, img_size=64, num_classes=5, width=64, num_heads=2, mlp_dim=128)
        tokens = []
        for block in model.blocks:
            block.register_forward_hook(lambda mod, inputs, out: tokens.append(inputs[0].shape[1]))
        logits = model(torch.zeros(2, 3, 64, 64))
        assert logits.shape == (2, 5)
        assert tokens == [16] * 6 + [8] * 6


def test_image_text_models_are_counted_on_their_image_side():
    model = sparsevision.create_model("two_tower_tiny_test")
    assert count_flops(model) == count_flops(model.image_tower) + 2 * model.image_tower.num_features * \
        model.image_proj.out_features


def test_grouped_dispatch_is_charged_for_kept_rows():
    """index: E x C padded rows per MoE matmul; grouped: the kept (token, expert) rows only (its bias add, an
    in-place [R, E] x [E, N] product, is not counted by torch, as no bias add is). Hand count from the routing
    metrics of the same forward."""
    index = sparsevision.create_model("vmoe_tiny_test", capacity_factor=0.5).eval()
    grouped = sparsevision.create_model("vmoe_tiny_test", capacity_factor=0.5, dispatcher="grouped").eval()
    grouped.load_state_dict(index.state_dict())
    _, aux = grouped(torch.zeros(1, 3, 32, 32), return_aux=True)
    width, hidden, experts, k, tokens = 32, 64, 4, 2, 17
    difference = 0
    for metrics in aux["moe"]:
        kept_rows = round((1 - float(metrics.dropped_fraction)) * tokens * k)
        assert 0 < kept_rows < tokens * k  # capacity 0.5 drops some choices
        difference += 2 * (experts * metrics.capacity - kept_rows) * 2 * width * hidden  # fewer expert rows
    assert count_flops(index) - count_flops(grouped) == difference
