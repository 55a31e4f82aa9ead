"""Auxiliary losses vs numpy formulas of V-MoE Appendix A.2 / GShard, the official unit-test values, and the
balanced vs collapsed limits."""
import math

import numpy as np
import pytest
import torch

from sparsevision.moe import MoeMlp, gshard_loss, importance_loss, load_loss

OFFICIAL_GATES = [[.5, .4, .1], [.3, .3, .4], [.1, .2, .7], [.8, .2, .0]]


def cv2(v):
    v = np.asarray(v, dtype=np.float64)
    return (v.std() / v.mean()) ** 2  # numpy std is ddof=0


def phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def np_importance(gates):
    return cv2(np.asarray(gates).sum(0))


def np_load(logits, noisy, noise_std, k):
    logits, noisy = np.asarray(logits), np.asarray(noisy)
    s, e = logits.shape
    p = np.zeros((s, e))
    for t in range(s):
        threshold = sorted(noisy[t], reverse=True)[k - 1]
        for j in range(e):
            p[t, j] = 1.0 - phi((threshold - logits[t, j]) / noise_std)
    return cv2(p.mean(0))


def np_gshard(gates):
    gates = np.asarray(gates)
    s, e = gates.shape
    top1 = np.zeros(e)
    for t in range(s):
        top1[int(np.argmax(gates[t]))] += 1.0 / s
    return float(np.mean(top1 * gates.mean(0)) * e * e)


def test_official_unit_test_values():
    # Expected numbers from the official vmoe/nn/routing_test.py.
    g = torch.tensor([OFFICIAL_GATES], dtype=torch.float64)
    assert importance_loss(g).item() == pytest.approx(0.03874999, abs=1e-6)
    assert gshard_loss(g).item() == pytest.approx(1.0875, abs=1e-6)
    logits = torch.tensor([[[.9, .06, .04], [.7, .18, .12], [.85, .05, .1]]], dtype=torch.float64)
    noise = torch.tensor([[[-.037, .026, -.018], [-.074, .045, -.015], [-.067, -.059, .073]]], dtype=torch.float64)
    assert load_loss(logits, logits + noise, 0.1, 2).item() == pytest.approx(0.48573864536489236, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_losses_match_numpy_per_group(k):
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    noisy = logits + 0.2 * torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    gates = logits.softmax(-1)
    for g in range(3):
        assert importance_loss(gates)[g].item() == pytest.approx(np_importance(gates[g].numpy()), rel=1e-10)
        assert gshard_loss(gates)[g].item() == pytest.approx(np_gshard(gates[g].numpy()), rel=1e-10)
        assert load_loss(logits, noisy, 0.2, k)[g].item() == pytest.approx(
            np_load(logits[g].numpy(), noisy[g].numpy(), 0.2, k), rel=1e-9)


def test_balanced_vs_collapsed():
    s, e = 8, 4
    uniform = torch.full((1, s, e), 1.0 / e, dtype=torch.float64)
    collapsed = torch.zeros(1, s, e, dtype=torch.float64)
    collapsed[..., 0] = 1.0
    assert importance_loss(uniform).item() == pytest.approx(0.0, abs=1e-12)
    # One expert takes all importance: CV^2 of [S, 0, .., 0] is E - 1.
    assert importance_loss(collapsed).item() == pytest.approx(e - 1, rel=1e-12)
    # Perfect round-robin top-1 with uniform gates gives GShard's minimum 1; full collapse gives E.
    round_robin = torch.full((1, s, e), 0.1 / (e - 1), dtype=torch.float64)
    for t in range(s):
        round_robin[0, t, t % e] = 0.9
    assert gshard_loss(round_robin).item() == pytest.approx(1.0, rel=1e-12)
    assert gshard_loss(collapsed).item() == pytest.approx(e, rel=1e-12)
    # Load: equal logits -> every expert equally likely -> 0; one dominant expert -> CV^2 ~ E - 1.
    flat = torch.zeros(1, s, e, dtype=torch.float64)
    assert load_loss(flat, flat, 0.25, 1).item() == pytest.approx(0.0, abs=1e-12)
    dominant = flat.clone()
    dominant[..., 0] = 50.0
    assert load_loss(dominant, dominant, 0.25, 1).item() == pytest.approx(e - 1, rel=1e-6)


def test_layer_aux_loss_is_weighted_mean_over_groups():
    torch.manual_seed(0)
    layer = MoeMlp(5, 7, 4, k=2, group_size=6, capacity_factor=1.0, importance_loss_weight=0.3,
                   load_loss_weight=0.7, gshard_loss_weight=0.2, noise_std=1.0).double().train()
    x = torch.randn(3, 4, 5, dtype=torch.float64)  # 12 tokens -> 2 groups of 6
    torch.manual_seed(7)
    _, m = layer(x)
    torch.manual_seed(7)
    noise = torch.randn(2, 6, 4, dtype=torch.float64) * (1.0 / 4)
    logits = (x.reshape(2, 6, 5) @ layer.router.gate.weight.detach().T).numpy()
    noisy = logits + noise.numpy()
    softmax = lambda a: np.exp(a - a.max(-1, keepdims=True)) / np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)
    imp = np.mean([np_importance(softmax(logits[g])) for g in range(2)])
    load = np.mean([np_load(logits[g], noisy[g], 0.25, 2) for g in range(2)])
    gsh = np.mean([np_gshard(softmax(noisy[g])) for g in range(2)])  # GShard uses the noisy gates in training
    assert m.importance_loss.item() == pytest.approx(imp, rel=1e-9)
    assert m.load_loss.item() == pytest.approx(load, rel=1e-9)
    assert m.gshard_loss.item() == pytest.approx(gsh, rel=1e-9)
    assert m.aux_loss.item() == pytest.approx(0.3 * imp + 0.7 * load + 0.2 * gsh, rel=1e-9)
    # Eval: no noise, no load loss; the aux loss is importance (+ GShard on clean gates).
    layer.eval()
    _, m = layer(x)
    gsh_clean = np.mean([np_gshard(softmax(logits[g])) for g in range(2)])
    assert m.load_loss.item() == 0.0
    assert m.aux_loss.item() == pytest.approx(0.3 * imp + 0.2 * gsh_clean, rel=1e-9)


def test_zero_weights_switch_losses_off():
    torch.manual_seed(0)
    layer = MoeMlp(5, 7, 4, importance_loss_weight=0.0, load_loss_weight=0.0, gshard_loss_weight=0.0).train()
    _, m = layer(torch.randn(2, 8, 5))
    assert m.aux_loss.item() == 0.0 and m.importance_loss.item() > 0.0
