import numpy as np
import pytest
import torch
from flax_reference import forward, make_tree

from sparsevision.convert import flatten_dict, load_flax_params, load_npz, use_tanh_gelu_
from sparsevision.convert.flax import detect_dialect
from sparsevision.models.vit import VisionTransformer
from sparsevision.models.vmoe import VisionMoE

DIMS = dict(width=16, depth=2, num_heads=2, mlp_dim=24, patch_size=4, img_size=8, num_classes=5)
TREE = dict(width=16, depth=2, heads=2, mlp=24, patch=4, img=8, classes=5)


def images(n=3, img=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3, img, img))


def vit(pool="token", rep=None, **kw):
    return VisionTransformer(pool=pool, representation_size=rep, **{**DIMS, **kw}).double().eval()


@pytest.mark.parametrize("dialect, pool, rep", [
    ("vit_jax", "token", 16), ("vit_jax", "gap", None), ("big_vision", "token", None), ("big_vision", "gap", 16),
    ("vmoe", "token", 16),
])
def test_dense_vit_matches_official_forward(dialect, pool, rep):
    tree = make_tree(dialect, pool=pool, rep=rep, **TREE)
    model = vit(pool, rep)
    report = load_flax_params(tree, model)
    assert report.ok and report.dialect == dialect and not report.resampled
    assert len(use_tanh_gelu_(model)) == 2  # the official checkpoints were trained with Flax's tanh gelu
    x = images()
    want = forward(tree, dialect, x, heads=2, pool=pool, rep=rep)
    got = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_float32_and_exact_gelu_gap():
    tree = make_tree("vit_jax", **TREE)
    model = VisionTransformer(**DIMS).eval()
    load_flax_params(tree, model)
    x = images()
    exact = model(torch.from_numpy(x).float()).detach().numpy()
    # Without switching the activation the model computes exact GELU, a different (close) function.
    np.testing.assert_allclose(exact, forward(tree, "vit_jax", x, heads=2, approximate=False), atol=1e-5)
    use_tanh_gelu_(model)
    got = model(torch.from_numpy(x).float()).detach().numpy()
    np.testing.assert_allclose(got, forward(tree, "vit_jax", x, heads=2), atol=1e-5)


def test_big_vision_scan_layout():
    tree = make_tree("big_vision", **TREE)
    blocks = [f"Transformer/encoderblock_{i}/" for i in range(2)]
    scan = {k: v for k, v in tree.items() if not k.startswith("Transformer/encoderblock_")}
    for key in (k[len(blocks[0]):] for k in tree if k.startswith(blocks[0])):
        scan[f"Transformer/encoderblock/{key}"] = np.stack([tree[b + key] for b in blocks])
    model = vit()
    load_flax_params(scan, model)
    use_tanh_gelu_(model)
    x = images()
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(),
                               forward(tree, "big_vision", x, heads=2), atol=1e-10)


def test_big_vision_class_token_gets_no_position_embedding():
    tree = make_tree("big_vision", **TREE)
    model = vit()
    load_flax_params(tree, model)
    pe = model.pos_embed.detach().numpy()
    assert np.all(pe[0, 0] == 0)
    np.testing.assert_array_equal(pe[0, 1:], tree["pos_embedding"][0])


@pytest.mark.parametrize("router, pool, k", [("top_k", "token", 2), ("top_k", "token", 1),
                                             ("expert_choice", "gap", 1), ("soft", "gap", 1)])
def test_moe_matches_official_forward(router, pool, k):
    qk = router == "soft"
    tree = make_tree("vmoe", pool=pool, rep=16, moe_layers=(1,), router=router, qk_norm=qk, **TREE)
    # Eval capacity large enough that no token is dropped: then grouping and buffer order do not matter.
    model = VisionMoE(pool=pool, representation_size=16, moe_layers=(1,), num_experts=4, k=k, router=router,
                      eval_capacity_factor=4.0, num_slots=2, qk_norm=qk, **DIMS).double().eval()
    report = load_flax_params(tree, model)
    assert report.ok and report.dialect == "vmoe"
    x = images()
    want = forward(tree, "vmoe", x, heads=2, pool=pool, rep=16, router=router, k=k, approximate=False)
    logits, aux = model(torch.from_numpy(x), return_aux=True)
    if router == "top_k":
        assert float(aux["moe"][0].dropped_fraction) == 0.0
    np.testing.assert_allclose(logits.detach().numpy(), want, rtol=1e-10, atol=1e-10)
    # Flax's tanh GELU in the dense MLP and the experts gives the official forward itself.
    assert use_tanh_gelu_(model) == ["blocks.0.mlp.act", "blocks.1.mlp.experts"]
    want = forward(tree, "vmoe", x, heads=2, pool=pool, rep=16, router=router, k=k)
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    built = VisionMoE(pool=pool, representation_size=16, moe_layers=(1,), num_experts=4, k=k, router=router,
                      eval_capacity_factor=4.0, num_slots=2, qk_norm=qk, gelu_approximate="tanh",
                      **DIMS).double().eval()
    load_flax_params(tree, built)
    np.testing.assert_allclose(built(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-10, atol=1e-10)


def test_experts_loaded_without_transpose_and_router_transposed():
    tree = make_tree("vmoe", moe_layers=(0, 1), **TREE)
    model = VisionMoE(moe_layers=(0, 1), num_experts=4, **DIMS).double()
    load_flax_params(tree, model)
    moe = model.blocks[0].mlp
    np.testing.assert_array_equal(moe.experts.fc1_weight.detach().numpy(),
                                  tree["Encoder/encoderblock_0/Moe/Mlp/Dense_0/kernel"])
    np.testing.assert_array_equal(moe.experts.fc2_bias.detach().numpy(),
                                  tree["Encoder/encoderblock_0/Moe/Mlp/Dense_1/bias"])
    np.testing.assert_array_equal(moe.router.gate.weight.detach().numpy().T,
                                  tree["Encoder/encoderblock_0/Moe/Router/dense/kernel"])


def test_position_embedding_resampled_like_scipy_zoom():
    from scipy.ndimage import zoom

    tree = make_tree("vit_jax", **TREE)  # 2x2 grid + class token
    model = vit(img_size=16)  # 4x4 grid
    report = load_flax_params(tree, model)
    assert report.resampled == ["Transformer/posembed_input/pos_embedding: 2x2 -> 4x4"]
    table = tree["Transformer/posembed_input/pos_embedding"][0]
    grid = zoom(table[1:].reshape(2, 2, -1), (2, 2, 1), order=1).reshape(16, -1)  # vit_jax interpolate_posembed
    pe = model.pos_embed.detach().numpy()[0]
    np.testing.assert_array_equal(pe[0], table[0])
    np.testing.assert_allclose(pe[1:], grid, atol=1e-12)


def test_errors_name_the_keys():
    tree = make_tree("vit_jax", **TREE)
    bad = dict(tree)
    del bad["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    bad["head/kernel"] = np.zeros((16, 7))
    bad["Transformer/encoderblock_0/extra/scale"] = np.zeros(3)
    model = vit()
    before = model.patch_embed.proj.weight.detach().clone()
    with pytest.raises(ValueError) as err:
        load_flax_params(bad, model)
    msg = str(err.value)
    assert "blocks.1.mlp.fc1.bias <- Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias" in msg
    assert "head/kernel: checkpoint (16, 7), model expects (16, 5)" in msg
    assert "Transformer/encoderblock_0/extra/scale" in msg
    torch.testing.assert_close(model.patch_embed.proj.weight, before)  # strict: nothing copied
    report = load_flax_params(bad, model, strict=False)
    assert not report.ok and "head.weight" not in report.loaded and "patch_embed.proj.weight" in report.loaded
    np.testing.assert_array_equal(model.patch_embed.proj.weight.detach().numpy(),
                                  tree["embedding/kernel"].transpose(3, 2, 0, 1))


def test_moe_model_refuses_dense_checkpoint_and_gap_refuses_class_row():
    tree = make_tree("vit_jax", **TREE)
    with pytest.raises(ValueError, match="upcycle"):
        load_flax_params(tree, VisionMoE(moe_layers=(1,), num_experts=4, **DIMS))
    with pytest.raises(ValueError, match=r"pos_embedding: checkpoint \(1, 5, 16\), model expects \(1, 4, 16\)"):
        load_flax_params(tree, vit(pool="gap"))


def test_npz_flatten_prefix_and_bfloat16(tmp_path):
    tree = make_tree("big_vision", **TREE)
    nested: dict = {}
    for key, value in tree.items():
        node = nested
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    assert flatten_dict(nested).keys() == tree.keys()
    np.savez(tmp_path / "ckpt.npz", **{f"img/{k}": v for k, v in tree.items()})
    flat = load_npz(tmp_path / "ckpt.npz", prefix="img")
    assert flat.keys() == tree.keys()
    # bfloat16 arrays saved without ml_dtypes come back as 2-byte void; they are the top halves of float32 bits.
    f32 = tree["head/bias"].astype(np.float32)
    flat["head/bias"] = (f32.view(np.uint32) >> 16).astype(np.uint16).view("V2")
    model = vit()
    load_flax_params(flat, model)
    want = ((f32.view(np.uint32) >> 16) << 16).view(np.float32)
    np.testing.assert_array_equal(model.head.bias.detach().numpy(), want)
    with pytest.raises(ValueError, match="top-level names"):
        load_npz(tmp_path / "ckpt.npz", prefix="txt")
    with pytest.raises(ValueError, match="cannot tell"):
        detect_dialect({"img/embedding/kernel": np.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "nope.npz")
