"""Two-tower image-text models: embeddings, MoE image towers' aux, LiT locking, registry and errors."""
import pytest
import torch

from sparsevision.layers import Mlp
from sparsevision.losses import clip_loss
from sparsevision.models import create_model
from sparsevision.models.text import TextTransformer
from sparsevision.models.two_tower import TwoTower, create_two_tower
from sparsevision.models.vit import VisionTransformer
from sparsevision.moe import MoeMlp
from sparsevision.text import ByteTokenizer


def text_tower(out_dim=16):
    return TextTransformer(vocab_size=259, max_len=16, width=32, depth=1, num_heads=2, mlp_dim=64, out_dim=out_dim)


def moe_vit():
    return VisionTransformer(img_size=16, patch_size=8, num_classes=0, width=32, depth=2, num_heads=2, mlp_dim=64,
                             pool="gap", mlp_builder=lambda i: MoeMlp(32, 64, 4) if i == 1 else Mlp(32, 64))


def test_embeddings_and_moe_aux():
    torch.manual_seed(0)
    model = TwoTower(moe_vit(), text_tower(), embed_dim=16).eval()  # eval: no router noise, calls agree
    images = torch.randn(3, 3, 16, 16)
    tokens = ByteTokenizer(max_len=16)(["a", "bb", "ccc"])
    img, txt, aux = model(images, tokens)
    assert img.shape == txt.shape == (3, 16)
    # encode_image is the image tower's pooled features through the projection; encode_text the text tower.
    features = model.image_tower(images)
    torch.testing.assert_close(img, model.image_proj(features))
    torch.testing.assert_close(txt, model.text_tower(tokens))
    assert len(aux["moe"]) == 1
    torch.testing.assert_close(aux["aux_loss"], aux["moe"][0].aux_loss)
    loss, metrics = model.contrastive_loss(img, txt)
    torch.testing.assert_close(loss, clip_loss(img, txt, model.contrastive_loss.log_scale))


def test_lit_locks_the_image_tower():
    torch.manual_seed(0)
    model = TwoTower(moe_vit(), text_tower(), embed_dim=16, lock_image=True, loss="sigmoid")
    model.train()
    assert not model.image_tower.training and model.text_tower.training
    assert all(not p.requires_grad for p in model.image_tower.parameters())
    before = {k: v.clone() for k, v in model.image_tower.state_dict().items()}
    proj_before = model.image_proj.weight.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    img, txt, aux = model(torch.randn(4, 3, 16, 16), ByteTokenizer(max_len=16)(["a", "b", "c", "d"]))
    loss, _ = model.contrastive_loss(img, txt)
    (loss + aux["aux_loss"]).backward()
    opt.step()
    for key, value in model.image_tower.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.image_proj.weight, proj_before)
    # In eval mode the (locked) tower has no router noise: two calls agree exactly.
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.encode_image(images), model.encode_image(images), rtol=0, atol=0)


def test_registry():
    model = create_model("two_tower_tiny_test")
    tok = model.build_tokenizer()
    img, txt, _ = model(torch.randn(2, 3, 32, 32), tok(["a red square", "a blue heart"]))
    assert img.shape == txt.shape == (2, 64)
    assert create_model("two_tower_tiny_test", num_classes=1000).image_tower.num_classes == 0
    with torch.device("meta"):
        big = create_model("two_tower_b16")
    assert big.embed_dim == 768 and big.max_len == 16


def test_errors():
    vit = VisionTransformer(img_size=16, patch_size=8, num_classes=5, width=32, depth=1, num_heads=2, mlp_dim=64)
    with pytest.raises(ValueError, match="num_classes=0"):
        TwoTower(vit, text_tower(), embed_dim=16)
    with pytest.raises(ValueError, match="out_dim"):
        TwoTower(moe_vit(), text_tower(out_dim=8), embed_dim=16)
    with pytest.raises(ValueError, match="contrastive loss"):
        create_two_tower(loss="hinge")
    with pytest.raises(ValueError, match="neither"):
        create_model("two_tower_tiny_test")()
