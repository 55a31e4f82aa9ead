"""Contrastive losses against float64 references written from the papers' formulas with plain Python loops."""
import math

import numpy as np
import pytest
import torch

from sparsevision.losses import (
    ClipLoss,
    SigLipLoss,
    clip_loss,
    clip_loss_from_logits,
    siglip_loss,
    siglip_loss_from_logits,
)


def _normalise(rows):
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _log_softmax_at(values, index):
    top = max(values)
    return values[index] - top - math.log(sum(math.exp(v - top) for v in values))


def _log_sigmoid(x):
    # log(1/(1+e^-x)), written so that it does not overflow for either sign.
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_clip(img, txt, scale):
    """CLIP Figure 3: logits = scale * I_e T_e^T; loss = (CE over rows + CE over columns) / 2."""
    zi, zt = _normalise(img), _normalise(txt)
    n = len(zi)
    logits = [[scale * _dot(zi[i], zt[j]) for j in range(n)] for i in range(n)]
    loss_i = -sum(_log_softmax_at(logits[i], i) for i in range(n)) / n
    loss_t = -sum(_log_softmax_at([logits[i][j] for i in range(n)], j) for j in range(n)) / n
    return (loss_i + loss_t) / 2


def reference_siglip(img, txt, t, b):
    """SigLIP Eq. 1: -1/|B| sum_i sum_j log(1 / (1 + exp(z_ij (-t x_i.y_j - b))))."""
    zi, zt = _normalise(img), _normalise(txt)
    n = len(zi)
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            total += _log_sigmoid(label * (t * _dot(zi[i], zt[j]) + b))
    return -total / n


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5)), rng.normal(size=(6, 5))


@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 50.0])
def test_clip_matches_float64_reference(pair, scale):
    img, txt = pair
    expected = reference_clip(img.tolist(), txt.tolist(), scale)
    got = clip_loss(torch.tensor(img), torch.tensor(txt), math.log(scale))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got32 = clip_loss(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32), math.log(scale))
    assert got32.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("t,b", [(10.0, -10.0), (1.0, 0.0), (3.0, 2.5)])
def test_siglip_matches_float64_reference(pair, t, b):
    img, txt = pair
    expected = reference_siglip(img.tolist(), txt.tolist(), t, b)
    got = siglip_loss(torch.tensor(img), torch.tensor(txt), math.log(t), b)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_modules_match_reference_at_paper_init(pair):
    img, txt = (torch.tensor(a, dtype=torch.float32) for a in pair)
    clip = ClipLoss()
    assert clip.log_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    loss, metrics = clip(img, txt)
    assert loss.item() == pytest.approx(reference_clip(*(a.tolist() for a in pair), 1 / 0.07), rel=1e-4)
    assert metrics["scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)

    sig = SigLipLoss()
    assert sig.log_scale.item() == pytest.approx(math.log(10.0), rel=1e-6)
    assert sig.bias.item() == -10.0
    loss, metrics = sig(img, txt)
    assert loss.item() == pytest.approx(reference_siglip(*(a.tolist() for a in pair), 10.0, -10.0), rel=1e-4)
    assert set(metrics) >= {"scale", "bias", "i2t_acc", "t2i_acc"}


def test_clip_scale_is_capped_at_100(pair):
    img, txt = (torch.tensor(a) for a in pair)
    capped = clip_loss(img, txt, math.log(1e4))
    assert capped.item() == pytest.approx(reference_clip(*(a.tolist() for a in pair), 100.0), rel=1e-10)
    module = ClipLoss()
    with torch.no_grad():
        module.log_scale.fill_(math.log(500.0))
    loss, metrics = module(img.float(), txt.float())
    loss.backward()
    assert metrics["scale"].item() == pytest.approx(100.0)
    assert module.log_scale.grad.item() == 0.0  # above the cap the parameter gets no push further up


def test_gradients_reach_temperature_and_bias(pair):
    img, txt = (torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in pair)
    clip, sig = ClipLoss(), SigLipLoss()
    (clip(img, txt)[0] + sig(img, txt)[0]).backward()
    for param in (clip.log_scale, sig.log_scale, sig.bias):
        assert param.grad is not None and torch.isfinite(param.grad) and param.grad.item() != 0.0
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0


def test_siglip_bias_gradient_matches_finite_difference(pair):
    img, txt = (torch.tensor(a) for a in pair)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    siglip_loss(img, txt, math.log(5.0), b).backward()
    eps = 1e-6
    numeric = (
        reference_siglip(img.tolist(), txt.tolist(), 5.0, -2.0 + eps)
        - reference_siglip(img.tolist(), txt.tolist(), 5.0, -2.0 - eps)
    ) / (2 * eps)
    assert b.grad.item() == pytest.approx(numeric, rel=1e-6)


def test_huge_logits_stay_finite():
    torch.manual_seed(0)
    img = torch.randn(8, 4, requires_grad=True)
    txt = torch.randn(8, 4, requires_grad=True)
    # Scales of 1e4 give logits of magnitude ~1e4: exp() would overflow in float32 without log-sum-exp / logsigmoid.
    log_t = torch.tensor(math.log(1e4), requires_grad=True)
    bias = torch.tensor(-1e4, requires_grad=True)
    losses = [
        siglip_loss(img, txt, log_t, bias),
        clip_loss(img, txt, log_t, max_scale=None),
        clip_loss_from_logits(torch.randn(8, 8) * 1e4),
        siglip_loss_from_logits(torch.randn(8, 8) * 1e4),
        siglip_loss(img * 1e4, txt * 1e4, 0.0, 0.0, normalize=False),
    ]
    sum(losses).backward()
    for loss in losses:
        assert torch.isfinite(loss)
    for grad in (img.grad, txt.grad, log_t.grad, bias.grad):
        assert torch.isfinite(grad).all()
    # At that scale SigLIP's loss is (almost exactly) the sum of hinge-like linear terms: check one regime by hand.
    logits = torch.tensor([[1e4, -3e4], [2e4, 5e3]], dtype=torch.float64)
    # -log sigmoid(z * l) ~ max(0, -z * l): only the negative pair (1, 0) with logit 2e4 costs anything; / |B| = 2.
    expected = 2e4 / 2
    assert siglip_loss_from_logits(logits).item() == pytest.approx(expected, rel=1e-9)


def test_aligned_pairs_beat_shuffled():
    torch.manual_seed(1)
    emb = torch.randn(16, 8)
    txt = emb + 0.05 * torch.randn(16, 8)
    shuffled = txt[torch.roll(torch.arange(16), 1)]
    for loss_fn in (ClipLoss(), SigLipLoss()):
        aligned_loss, aligned_metrics = loss_fn(emb, txt)
        shuffled_loss, shuffled_metrics = loss_fn(emb, shuffled)
        assert aligned_loss < shuffled_loss
        assert aligned_metrics["i2t_acc"] == 1.0 and aligned_metrics["t2i_acc"] == 1.0
        assert shuffled_metrics["i2t_acc"] == 0.0


def test_half_precision_embeddings_give_a_float32_loss(pair):
    img, txt = (torch.tensor(a, dtype=torch.float32) for a in pair)
    for loss_fn in (ClipLoss(), SigLipLoss()):
        full, _ = loss_fn(img, txt)
        half, _ = loss_fn(img.bfloat16(), txt.bfloat16())
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=2e-2)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\[batch, dim\]"):
        siglip_loss(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="batch size 0"):
        SigLipLoss()(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="square"):
        clip_loss_from_logits(torch.randn(3, 4))
    with pytest.raises(ValueError, match="init_scale"):
        ClipLoss(init_scale=0.0)
