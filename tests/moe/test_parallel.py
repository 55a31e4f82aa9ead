"""Expert parallelism on 2 gloo processes vs one process on the same global batch.

The reference is the plain one-process model (no sharding code at all) trained on the global batch; the
2-rank job trains on the two halves, with each rank holding half of the experts (ep_size=2) or all of them,
replicated and averaged (ep_size=1). Routing groups never span the two halves (each rank's batch is a whole
number of groups), so the two runs compute the same function and differ only by rounding: the layer checks run
in float32 (tolerance 1e-5), the training checks in float64 (1e-10), because AdamW's normalised updates turn
float32 rounding (1e-7) into 1e-5 parameter differences within two steps and would hide a real error that size.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F

from sparsevision import create_model
from sparsevision.distributed import DistributedContext, DistributedError, barrier, launch_local, wrap_ddp
from sparsevision.models import vmoe  # noqa: F401  (registers the V-MoE names)
from sparsevision.moe import Experts, MoeMlp
from sparsevision.moe.parallel import (clip_grad_norm_, default_ep_size, expert_parallel_params,
                                       full_optimizer_state_dict, full_state_dict, load_full_optimizer_state_dict_,
                                       load_full_state_dict_, shard_experts_)

WORLD = 2
EP_SIZES = (2, 1)  # each rank holds half of the experts / all experts, replicated
TOL = 1e-5  # float32 layer checks
TOL64 = 1e-10  # float64 training checks
LAYERS = {
    # A V-MoE group spans 2 images, so a rank's 4 images are 2 whole groups.
    "top_k": dict(router="top_k", k=2, group_size=12, capacity_factor=1.0, noise_std=0.0),
    "expert_choice": dict(router="expert_choice", capacity_factor=1.0, noise_std=0.0, dispatcher="einsum"),
    # Packed rows in one process and replicated experts; sharded experts fall back to padded index buffers.
    "top_k_grouped": dict(router="top_k", k=2, group_size=12, capacity_factor=1.0, noise_std=0.0,
                          dispatcher="grouped"),
    "soft": dict(router="soft", num_slots=2),
    # A rank's 24 tokens are one 16-token group and a remainder group of 8: two exchanges per layer call.
    "top_k_remainder": dict(router="top_k", k=2, group_size=16, capacity_factor=1.0, noise_std=0.0),
}
PER_RANK_GROUPS = {"top_k_remainder"}  # groups end at each rank's batch boundary (see `reference`)
STEPS, LR, MAX_NORM = 3, 1e-2, 0.05


def _make_layer(kind: str) -> MoeMlp:
    return MoeMlp(8, 16, 4, **LAYERS[kind])


def _make_model():
    return create_model("vmoe_tiny_test", noise_std=0.0).double()


def _loss(model, images, labels):
    logits, aux = model(images, return_aux=True)
    return F.cross_entropy(logits, labels) + aux["aux_loss"]


def _optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)


def _layer_loss(layer, x, r):
    out, metrics = layer(x)
    return (out * r).sum() / x.shape[0] + metrics.aux_loss, out


@pytest.fixture(scope="module")
def reference():
    """One process, global batch of 8: layer outputs and gradients, and 3 clipped AdamW steps of a tiny V-MoE."""
    torch.manual_seed(0)
    ref = {"layers": {}}
    for kind in LAYERS:
        layer = _make_layer(kind)
        x = torch.randn(8, 6, 8, requires_grad=True)
        r = torch.randn(8, 6, 8)
        state = copy.deepcopy(layer.state_dict())
        if kind in PER_RANK_GROUPS:
            # Routing is per rank, so the one-process reference routes the ranks' halves apart; its loss is
            # their mean, the DDP convention.
            halves = [_layer_loss(layer, _half(x, h), _half(r, h)) for h in range(WORLD)]
            loss, out = sum(h[0] for h in halves) / WORLD, torch.cat([h[1] for h in halves])
        else:
            loss, out = _layer_loss(layer, x, r)
        loss.backward()
        ref["layers"][kind] = dict(state=state, x=x.detach(), r=r, out=out.detach(), x_grad=x.grad,
                                   grads={n: p.grad.clone() for n, p in layer.named_parameters()})
    torch.manual_seed(0)  # rank 0 of the job builds its model from the same seed
    model = _make_model()
    ref["init"] = copy.deepcopy(model.state_dict())
    ref["batches"] = [(torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,)))
                      for _ in range(STEPS)]
    opt = _optimizer(model)
    ref["losses"], ref["norms"] = [], []
    for step, (images, labels) in enumerate(ref["batches"]):
        loss = _loss(model, images, labels)
        loss.backward()
        ref["norms"].append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))
        opt.step()
        opt.zero_grad()
        ref["losses"].append(float(loss.detach()))
        if step == STEPS - 2:
            ref["model_before_last"] = copy.deepcopy(model.state_dict())
            ref["opt_before_last"] = copy.deepcopy(opt.state_dict())
    ref["final"] = copy.deepcopy(model.state_dict())
    return ref


def _half(t: torch.Tensor, rank: int) -> torch.Tensor:
    n = t.shape[0] // WORLD
    return t[rank * n:(rank + 1) * n]


def _worker(ctx: DistributedContext, ref: dict, ep_sizes: tuple[int, ...]) -> dict:
    return {ep_size: _run(ctx, ref, ep_size) for ep_size in ep_sizes}


def _run(ctx: DistributedContext, ref: dict, ep_size: int) -> dict:
    torch.manual_seed(1234 + ctx.rank)  # different weights per rank: everything must come from sync or loading
    out = {"layers": {}}
    for kind, data in ref["layers"].items():
        layer = _make_layer(kind)
        shard_experts_(layer, ctx, ep_size=ep_size)
        load_full_state_dict_(layer, data["state"])  # 1 -> 2 ranks: a one-process state_dict, sliced
        x = _half(data["x"], ctx.rank).clone().requires_grad_()
        loss, y = _layer_loss(layer, x, _half(data["r"], ctx.rank))
        loss.backward()
        grads = {}
        for name, p in layer.named_parameters():
            g = p.grad.clone()
            if not getattr(p, "expert_parallel", False):  # what DDP would do to the replicated parameters
                torch.distributed.all_reduce(g)
                g /= ctx.world_size
            grads[name] = g
        out["layers"][kind] = dict(out=y.detach(), x_grad=x.grad, grads=grads)

    # A tiny V-MoE: rank 0's weights reach every rank through shard_experts_'s broadcast.
    torch.manual_seed(0 if ctx.rank == 0 else 99)
    model = _make_model()
    shard_experts_(model, ctx, ep_size=ep_size)
    out["after_sync"] = full_state_dict(model, all_ranks=True)
    out["shapes"] = {n: tuple(p.shape) for n, p in expert_parallel_params(model).items()}
    out["copy_shapes"] = {n: tuple(p.shape) for n, p in copy.deepcopy(model).named_parameters() if n in out["shapes"]}
    out["local_experts"] = {n: p.detach().clone() for n, p in expert_parallel_params(model).items()}
    ddp = wrap_ddp(model, ctx)
    opt = _optimizer(model)
    out["losses"], out["norms"] = [], []
    for step, (images, labels) in enumerate(ref["batches"]):
        loss = _loss(ddp, _half(images, ctx.rank), _half(labels, ctx.rank))
        loss.backward()
        out["norms"].append(float(clip_grad_norm_(model, MAX_NORM)))
        opt.step()
        opt.zero_grad()
        out["losses"].append(float(loss.detach()))
        if step == STEPS - 2:  # N -> 1: the one-process layout, gathered on rank 0; training goes on after it
            out["model_before_last"] = full_state_dict(model)
            # Like optimizer.state_dict(), it shares the live tensors of the replicated parameters: copy to keep.
            out["opt_before_last"] = copy.deepcopy(full_optimizer_state_dict(opt))
    out["continued"] = full_state_dict(model)

    # 1 -> N with optimizer state: a fresh model and optimizer resume from the *reference's* checkpoint.
    torch.manual_seed(777)
    model = _make_model()
    shard_experts_(model, ctx, ep_size=ep_size, sync_from_rank0=False)
    load_full_state_dict_(model, ref["model_before_last"])
    ddp = wrap_ddp(model, ctx)
    opt = _optimizer(model)
    load_full_optimizer_state_dict_(opt, ref["opt_before_last"])
    images, labels = ref["batches"][-1]
    loss = _loss(ddp, _half(images, ctx.rank), _half(labels, ctx.rank))
    loss.backward()
    out["resumed_norm"] = float(clip_grad_norm_(model, MAX_NORM))
    opt.step()
    out["resumed"] = full_state_dict(model)
    return out


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= tol * max(1.0, b.double().abs().max().item()), f"{what}: max abs error {err:.3g}"


def _close_states(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for key in b:
        _close(a[key], b[key], f"{what} {key}", TOL64)


@pytest.fixture(scope="module")
def two_ranks(reference):
    """One 2-process job (process start-up dominates the cost) for both layouts."""
    results = launch_local(_worker, WORLD, args=(reference, EP_SIZES), timeout_s=30, join_timeout_s=120)
    return [r.value for r in results]


@pytest.mark.parametrize("ep_size", EP_SIZES, ids=["sharded", "replicated"])
def test_expert_parallel_matches_one_process(reference, two_ranks, ep_size):
    results = [r[ep_size] for r in two_ranks]
    for rank, res in enumerate(results):
        for kind, data in reference["layers"].items():
            got = res["layers"][kind]
            _close(got["out"], _half(data["out"], rank), f"{kind} output, rank {rank}")
            # Rank r's loss is WORLD x its share of the global mean, hence its input gradient too.
            _close(got["x_grad"] / WORLD, _half(data["x_grad"], rank), f"{kind} input grad, rank {rank}")
            for name, g in got["grads"].items():
                want = data["grads"][name]
                if name.startswith("experts."):
                    per = want.shape[0] // ep_size
                    want = want[(rank % ep_size) * per:(rank % ep_size + 1) * per]
                _close(g, want, f"{kind} grad {name}, rank {rank}")
        # Each rank holds only its experts, and they are rank 0's (= the reference's) initial experts.
        assert res["shapes"], "no expert-parallel parameters"
        assert res["copy_shapes"] == res["shapes"]  # a deep copy (an EMA, say) keeps the shards
        for name, shape in res["shapes"].items():
            full = reference["init"][name]
            assert shape == (full.shape[0] // ep_size, *full.shape[1:]), name
            p = rank % ep_size
            _close(res["local_experts"][name], full[p * shape[0]:(p + 1) * shape[0]], f"initial shard {name}", 0)
        _close_states(res["after_sync"], reference["init"], f"synchronised model, rank {rank}")
    main, other = results
    assert other["model_before_last"] is None and other["opt_before_last"] is None  # gathered on rank 0 only
    for step, want in enumerate(reference["losses"]):
        got = (main["losses"][step] + other["losses"][step]) / WORLD  # DDP convention: mean of the local means
        assert abs(got - want) <= TOL64 * max(1.0, abs(want)), f"step {step}: loss {got} != {want}"
        for res in (main, other):
            assert abs(res["norms"][step] - reference["norms"][step]) <= TOL64 * reference["norms"][step]
    assert reference["norms"][0] > MAX_NORM, "the clipping threshold should be active in this test"
    _close_states(main["model_before_last"], reference["model_before_last"], "2 -> 1 model")
    want_opt, got_opt = reference["opt_before_last"], main["opt_before_last"]
    assert got_opt["param_groups"] == want_opt["param_groups"]
    for index, per_param in want_opt["state"].items():
        for name, value in per_param.items():
            _close(got_opt["state"][index][name], value, f"2 -> 1 optimizer state {index}.{name}", TOL64)
    _close_states(main["continued"], reference["final"], "model trained on after the gather")
    _close_states(main["resumed"], reference["final"], "1 -> 2 resumed model")
    assert abs(main["resumed_norm"] - reference["norms"][-1]) <= TOL64 * reference["norms"][-1]


def _failure_worker(ctx: DistributedContext) -> dict:
    """Two failures in one job (process start-up is the expensive part): a rank that never joins the exchange,
    then a rank that raises."""
    out = {}
    # 1. Rank 1 is stuck elsewhere: rank 0's exchange must fail after the (short) timeout of its expert groups.
    layer = _make_layer("top_k")
    shard_experts_(layer, dataclasses.replace(ctx, timeout_s=2.0))
    if ctx.rank == 0:
        start = time.monotonic()
        try:
            layer(torch.randn(4, 6, 8))
        except DistributedError as err:
            out["stuck"] = (str(err), time.monotonic() - start)
    barrier(ctx)
    # 2. Rank 1 raises (and its process exits): rank 0 waits in the token all_to_all for a rank that is gone.
    layer = _make_layer("top_k")
    shard_experts_(layer, ctx)
    if ctx.rank == 1:
        raise RuntimeError("simulated failure on rank 1")
    start = time.monotonic()
    try:
        layer(torch.randn(4, 6, 8))
    except DistributedError as err:
        out["crashed"] = (str(err), time.monotonic() - start)
    return out


def test_failed_rank_stops_the_other_rank_with_a_clear_error():
    results = launch_local(_failure_worker, WORLD, timeout_s=15, join_timeout_s=60, raise_on_error=False)
    assert not results[1].ok and "simulated failure on rank 1" in results[1].error
    assert results[0].ok, results[0].error
    for case in ("stuck", "crashed"):
        assert case in results[0].value, f"rank 0 finished a forward pass although rank 1 was {case}"
        message, seconds = results[0].value[case]
        assert message.startswith("DistributedError: rank 0: ") or message.startswith("rank 0: "), message
        assert "token all_to_all failed" in message and "timeout" in message
        assert seconds < 15, f"{case}: rank 0 waited {seconds:.1f} s"
    assert "timeout 2.0 s" in results[0].value["stuck"][0]


def test_single_process_is_a_no_op_and_bad_layouts_are_rejected_before_any_collective():
    layer = _make_layer("top_k")
    assert shard_experts_(layer, DistributedContext()) is None
    assert not expert_parallel_params(layer) and isinstance(layer.experts, Experts)
    fake = DistributedContext(world_size=8, group=object())  # any collective on it would fail
    with pytest.raises(ValueError, match="no MoeMlp"):
        shard_experts_(torch.nn.Linear(2, 2), fake)
    with pytest.raises(ValueError, match="ep_size must divide the world size 8, got ep_size=3"):
        shard_experts_(layer, fake, ep_size=3)
    with pytest.raises(ValueError, match="num_experts=4 is not divisible by ep_size=8"):
        shard_experts_(layer, fake, ep_size=8)
    assert default_ep_size(layer, 8) == 4 and default_ep_size(layer, 6) == 2
