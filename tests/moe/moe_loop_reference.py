"""Float64 per-token loop references written from the papers, independent of sparsevision.moe's vectorised code.

Plain Python loops over tokens; expert buffers are filled one token at a time. Parameters are read from a layer but
every computation (gates, softmax, top-k, capacity slots, experts, Soft MoE weights) is redone here in numpy/math.
"""
import math

import numpy as np


def np64(t):
    return t.detach().cpu().double().numpy()


def gelu(v):
    return np.array([0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0))) for a in v])


def gelu_tanh(v):
    """Hendrycks & Gimpel's tanh approximation (Flax's default `nn.gelu`)."""
    return np.array([0.5 * a * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3))) for a in v])


def softmax(v):
    m = max(v)
    ex = [math.exp(a - m) for a in v]
    s = sum(ex)
    return [a / s for a in ex]


def expert_params(experts):
    """Weights as float64 arrays, plus the activation the experts were built with."""
    act = gelu_tanh if getattr(experts, "gelu_approximate", "none") == "tanh" else gelu
    return [np64(p) for p in (experts.fc1_weight, experts.fc1_bias, experts.fc2_weight, experts.fc2_bias)] + [act]


def apply_expert(params, e, v):
    w1, b1, w2, b2, act = params
    return act(v @ w1[e] + b1[e]) @ w2[e] + b2[e]


def gates_for_token(gate_w, v, noise=None):
    """Softmax over experts of the bias-free linear gate (plus optional noise on the logits)."""
    logits = [float(gate_w[e] @ v) for e in range(gate_w.shape[0])]
    if noise is not None:
        logits = [a + float(n) for a, n in zip(logits, noise)]
    return softmax(logits)


def top_k_loop(layer, x, k, capacity, group_size, batch_priority, noise=None):
    """V-MoE routing (Riquelme et al. 2021, Sec. 2.2 + BPR, Sec. 4.1), one token at a time.

    Returns (output [B, N, D], dropped set of (flat_token, choice_j), first-choice expert per flat token).
    noise: optional [num_groups, group_size, E] array added to the logits.
    """
    xs = np64(x)
    b, n, d = xs.shape
    tokens = xs.reshape(-1, d)
    gate_w = np64(layer.router.gate.weight)
    params = expert_params(layer.experts)
    num_experts = gate_w.shape[0]
    out = np.zeros_like(tokens)
    dropped, first = set(), {}
    for g in range(len(tokens) // group_size):
        ids = list(range(g * group_size, (g + 1) * group_size))
        gates = {t: gates_for_token(gate_w, tokens[t], None if noise is None else noise[g][t - g * group_size])
                 for t in ids}
        choices = {t: sorted(range(num_experts), key=lambda e: -gates[t][e])[:k] for t in ids}
        for t in ids:
            first[t] = choices[t][0]
        # BPR: tokens with a larger top gate go first (Python's sort is stable: ties keep token order).
        order = sorted(ids, key=lambda t: -gates[t][choices[t][0]]) if batch_priority else ids
        filled = [0] * num_experts
        for j in range(k):  # every token's j-th choice before any (j+1)-th choice
            for t in order:
                e = choices[t][j]
                if filled[e] < capacity:
                    filled[e] += 1
                    out[t] += gates[t][e] * apply_expert(params, e, tokens[t])
                else:
                    dropped.add((t, j))
    return out.reshape(b, n, d), dropped, first


def expert_choice_loop(layer, x, capacity, group_size):
    """Expert choice (Zhou et al. 2022): expert e processes the `capacity` tokens with the largest gate g[t, e]."""
    xs = np64(x)
    b, n, d = xs.shape
    tokens = xs.reshape(-1, d)
    gate_w = np64(layer.router.gate.weight)
    params = expert_params(layer.experts)
    num_experts = gate_w.shape[0]
    out = np.zeros_like(tokens)
    picks = []  # per group: list over experts of the chosen flat token ids
    for g in range(len(tokens) // group_size):
        ids = list(range(g * group_size, (g + 1) * group_size))
        gates = {t: gates_for_token(gate_w, tokens[t]) for t in ids}
        group_picks = []
        for e in range(num_experts):
            chosen = sorted(ids, key=lambda t: -gates[t][e])[:capacity]
            group_picks.append(chosen)
            for t in chosen:
                out[t] += gates[t][e] * apply_expert(params, e, tokens[t])
        picks.append(group_picks)
    return out.reshape(b, n, d), picks


def soft_moe_loop(layer, x, group_size):
    """Soft MoE (Puigcerver et al. 2023, Sec. 2.1 and the l2 normalisation of Sec. 2.3 / official router)."""
    xs = np64(x)
    b, n, d = xs.shape
    tokens = xs.reshape(-1, d)
    mu = np64(layer.router.mu)  # [D, E, P]
    scale = float(layer.router.scale.detach())
    params = expert_params(layer.experts)
    _, num_experts, num_slots = mu.shape
    mu_unit = np.zeros_like(mu)
    for e in range(num_experts):
        for p in range(num_slots):
            col = mu[:, e, p]
            mu_unit[:, e, p] = col / math.sqrt(float(col @ col) + 1e-6)
    out = np.zeros_like(tokens)
    dispatch_all, combine_all = [], []
    for g in range(len(tokens) // group_size):
        ids = list(range(g * group_size, (g + 1) * group_size))
        unit = {t: tokens[t] / math.sqrt(float(tokens[t] @ tokens[t]) + 1e-6) for t in ids}
        logit = {(t, e, p): scale * float(unit[t] @ mu_unit[:, e, p])
                 for t in ids for e in range(num_experts) for p in range(num_slots)}
        dispatch = np.zeros((group_size, num_experts, num_slots))
        combine = np.zeros((group_size, num_experts, num_slots))
        slot_out = {}
        for e in range(num_experts):
            for p in range(num_slots):
                w = softmax([logit[t, e, p] for t in ids])  # over the tokens of the group
                dispatch[:, e, p] = w
                slot_in = sum(wi * tokens[t] for wi, t in zip(w, ids))
                slot_out[e, p] = apply_expert(params, e, slot_in)
        for i, t in enumerate(ids):
            keys = [(e, p) for e in range(num_experts) for p in range(num_slots)]
            w = softmax([logit[t, e, p] for e, p in keys])  # over all slots
            for wi, (e, p) in zip(w, keys):
                combine[i, e, p] = wi
                out[t] += wi * slot_out[e, p]
        dispatch_all.append(dispatch)
        combine_all.append(combine)
    return out.reshape(b, n, d), np.stack(dispatch_all), np.stack(combine_all)
