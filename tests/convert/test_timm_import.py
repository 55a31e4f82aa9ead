import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from sparsevision.convert import from_timm, load_timm_weights
from sparsevision.convert.timm import vit_kwargs_from_timm
from sparsevision.models.vit import VisionTransformer

D, DEPTH, HEADS, MLP, P, IMG, CLASSES = 16, 2, 2, 24, 4, 8, 5


def timm_state(pool="token", rep=None, embed_class=True, seed=0):
    """A state dict in timm's VisionTransformer naming, with random float64 values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.3

    grid = (IMG // P) ** 2
    sd = {"patch_embed.proj.weight": r(D, 3, P, P), "patch_embed.proj.bias": r(D),
          "pos_embed": r(1, grid + (pool == "token" and embed_class), D)}
    if pool == "token":
        sd["cls_token"] = r(1, 1, D)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
                   b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(MLP, D),
                   b + "mlp.fc1.bias": r(MLP), b + "mlp.fc2.weight": r(D, MLP), b + "mlp.fc2.bias": r(D)})
    sd.update({"norm.weight": 1 + r(D), "norm.bias": r(D)})
    if rep:
        sd.update({"pre_logits.fc.weight": r(rep, D), "pre_logits.fc.bias": r(rep)})
    sd.update({"head.weight": r(CLASSES, rep or D), "head.bias": r(CLASSES)})
    return sd


def timm_forward(sd, x, pool="token", rep=None):
    """timm's VisionTransformer.forward written out (float64): conv patches, [cls] + pos, pre-LN blocks."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    if pool == "token":
        cls = sd["cls_token"].expand(x.shape[0], -1, -1)
        if sd["pos_embed"].shape[1] == x.shape[1]:  # no_embed_class: position first, class token after
            x = torch.cat([cls, x + sd["pos_embed"]], 1)
        else:
            x = torch.cat([cls, x], 1) + sd["pos_embed"]
    else:
        x = x + sd["pos_embed"]
    b, n, _ = x.shape
    for i in range(DEPTH):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).softmax(-1)
        y = (w @ v).transpose(1, 2).reshape(b, n, D) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + y
        y = F.layer_norm(x, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    x = x[:, 0] if pool == "token" else x.mean(1)
    if rep:
        x = torch.tanh(x @ sd["pre_logits.fc.weight"].T + sd["pre_logits.fc.bias"])
    return x @ sd["head.weight"].T + sd["head.bias"]


def ours(pool="token", rep=None, img_size=IMG):
    return VisionTransformer(img_size=img_size, patch_size=P, num_classes=CLASSES, width=D, depth=DEPTH,
                             num_heads=HEADS, mlp_dim=MLP, pool=pool, representation_size=rep).double().eval()


def test_each_tensor_maps_to_the_same_name_except_pre_logits():
    sd = timm_state(rep=8)
    model = ours(rep=8)
    report = load_timm_weights(model, sd)
    assert report.ok and report.dialect == "timm"
    own = model.state_dict()
    for key, value in sd.items():
        target = key.replace("pre_logits.fc.", "pre_logits.0.")
        torch.testing.assert_close(own[target], value, rtol=0, atol=0)


@pytest.mark.parametrize("pool, rep, embed_class", [("token", None, True), ("token", 8, False), ("gap", None, True)])
def test_logits_equal_timm_forward(pool, rep, embed_class):
    sd = timm_state(pool, rep, embed_class)
    model = ours(pool, rep)
    load_timm_weights(model, sd)
    x = torch.randn(3, 3, IMG, IMG, dtype=torch.float64)
    torch.testing.assert_close(model(x), timm_forward(sd, x, pool, rep), rtol=1e-10, atol=1e-10)


def test_files_and_wrappers(tmp_path):
    from safetensors.torch import save_file

    sd = timm_state()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"model": sd}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        model = ours()
        load_timm_weights(model, path)
        torch.testing.assert_close(model.head.weight, sd["head.weight"])
    with pytest.raises(FileNotFoundError):
        load_timm_weights(ours(), tmp_path / "missing.pth")


def test_unsupported_and_mismatched_keys_are_named():
    sd = timm_state()
    sd["blocks.0.ls1.gamma"] = torch.ones(D, dtype=torch.float64)  # LayerScale: not in our ViT
    sd["head.weight"] = torch.zeros(7, D, dtype=torch.float64)
    del sd["norm.bias"]
    with pytest.raises(ValueError) as err:
        load_timm_weights(ours(), sd)
    msg = str(err.value)
    assert "blocks.0.ls1.gamma" in msg and "norm.bias" in msg
    assert "head.weight: checkpoint (7, 16), model expects (5, 16)" in msg
    report = load_timm_weights(ours(), sd, strict=False)
    assert "blocks.0.attn.qkv.weight" in report.loaded and "head.weight" not in report.loaded


def test_pos_embed_resampled_for_a_new_resolution():
    sd = timm_state()
    model = ours(img_size=16)
    report = load_timm_weights(model, sd)
    assert report.resampled == ["pos_embed: 2x2 -> 4x4"]
    torch.testing.assert_close(model.pos_embed[0, 0], sd["pos_embed"][0, 0])
    # Corner-aligned bilinear: the four corners of the new grid are the old corners.
    new = model.pos_embed[0, 1:].reshape(4, 4, D)
    old = sd["pos_embed"][0, 1:].reshape(2, 2, D)
    for (i, j), (u, v) in {(0, 0): (0, 0), (0, 3): (0, 1), (3, 0): (1, 0), (3, 3): (1, 1)}.items():
        torch.testing.assert_close(new[i, j], old[u, v])


def test_kwargs_from_state_dict():
    kw = vit_kwargs_from_timm(timm_state(rep=8), num_heads=HEADS)
    assert kw == dict(patch_size=P, in_chans=3, width=D, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, pool="token",
                      head_zero_init=False, num_classes=CLASSES, representation_size=8, img_size=IMG)
    assert vit_kwargs_from_timm(timm_state(embed_class=False), HEADS)["img_size"] == IMG
    with pytest.raises(ValueError, match="global_pool='map'"):
        vit_kwargs_from_timm(timm_state(), HEADS, global_pool="map")


def test_from_timm_without_timm_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'sparsevision\[timm\]'"):
        from_timm("vit_base_patch16_224")


def test_from_timm_with_a_stand_in_timm(monkeypatch):
    sd = timm_state()

    class FakeVit(torch.nn.Module):  # the attributes of timm's VisionTransformer that from_timm reads
        global_pool = "token"
        blocks = [types.SimpleNamespace(attn=types.SimpleNamespace(num_heads=HEADS))]
        patch_embed = types.SimpleNamespace(img_size=(IMG, IMG))

        def state_dict(self):
            return sd

    calls = []
    fake = types.SimpleNamespace(create_model=lambda name, pretrained: calls.append((name, pretrained)) or FakeVit())
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = from_timm("vit_tiny", pretrained=False)
    assert calls == [("vit_tiny", False)] and not model.training
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(model(x).double(), timm_forward(sd, x.double()), rtol=1e-5, atol=1e-5)
