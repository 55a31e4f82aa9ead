"""Process-group helpers: torchrun environment parsing and its errors, the one-process fallbacks, rank-aware
logging, and (one 2-process gloo job) the collectives checked against values computed by hand."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from sparsevision.distributed import (DistributedContext, DistributedError, all_reduce_mean, barrier,
                                      broadcast_module_, collective_guard, find_free_port, gather_dim0, get_logger,
                                      launch_local, setup_distributed, shard_dim0, teardown_distributed, unwrap,
                                      wrap_ddp)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_torchrun_a_one_process_context_and_no_process_group(no_torchrun):
    ctx = setup_distributed()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.group) == (0, 1, 0, None)
    assert ctx.is_main and not ctx.is_distributed and not torch.distributed.is_initialized()
    model = nn.Linear(3, 2)
    assert wrap_ddp(model, ctx) is model and unwrap(model) is model
    t = torch.tensor([1.0, 2.0])
    mean = all_reduce_mean(t, ctx)
    assert torch.equal(mean, t) and mean is not t
    barrier(ctx)
    assert broadcast_module_(model, ctx) is model
    teardown_distributed(ctx)


@pytest.mark.parametrize("env, kwargs, message", [
    ({"WORLD_SIZE": "two"}, {}, "WORLD_SIZE='two' must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, {}, r"rank must be in \[0, 1\], got rank=2"),
    ({}, {"world_size": 0}, "world_size must be >= 1"),
    ({}, {"backend": "mpi"}, "backend must be one of"),
    ({}, {"timeout_s": 0}, "timeout_s must be > 0"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, {"backend": "gloo"}, "MASTER_ADDR is not set"),
])
def test_bad_launch_settings_are_named(no_torchrun, env, kwargs, message):
    for name, value in env.items():
        no_torchrun.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        setup_distributed(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_nccl_without_cuda_is_rejected(no_torchrun):
    with pytest.raises(ValueError, match="nccl.*needs CUDA"):
        setup_distributed("nccl")


def test_logger_prefixes_the_rank_and_quiets_other_ranks(capsys):
    main = get_logger("test_prefix", DistributedContext(rank=0, world_size=4))
    other = get_logger("test_prefix", DistributedContext(rank=3, world_size=4))
    main.info("step 1")
    other.info("hidden progress")
    other.warning("disk almost full")
    err = capsys.readouterr().err.splitlines()
    assert err == ["[rank 0/4] step 1", "[rank 3/4] disk almost full"]
    assert get_logger("test_prefix", DistributedContext(rank=3, world_size=4), all_ranks=True).level == logging.INFO


def test_shards_concatenate_back_and_bad_cuts_are_rejected():
    full = torch.arange(24.0).reshape(6, 4)
    shards = [shard_dim0(full, i, 3) for i in range(3)]
    assert [s.shape for s in shards] == [torch.Size([2, 4])] * 3
    assert torch.equal(torch.cat(shards), full)
    assert gather_dim0(shards[1], group=None) is shards[1]  # no group: nothing to gather
    with pytest.raises(ValueError, match=r"shape \(6, 4\) into 4 equal shards"):
        shard_dim0(full, 0, 4)
    with pytest.raises(ValueError, match="index=3 and num_shards=3"):
        shard_dim0(full, 3, 3)


def test_collective_guard_names_rank_operation_and_timeout():
    ctx = DistributedContext(rank=5, world_size=8, timeout_s=42.0)
    with pytest.raises(DistributedError, match=r"rank 5: all_reduce of x failed.*timeout 42.0 s.*peer gone"):
        with collective_guard("all_reduce of x", ctx):
            raise RuntimeError("peer gone")
    with pytest.raises(KeyError):  # not a backend error: left alone
        with collective_guard("all_reduce of x", ctx):
            raise KeyError("k")


def test_find_free_port_is_bindable():
    import socket

    port = find_free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def _collectives(ctx: DistributedContext) -> dict:
    torch.manual_seed(ctx.rank)  # different weights per rank before the broadcast
    model = nn.Linear(3, 2)
    broadcast_module_(model, ctx)
    mean = all_reduce_mean(torch.tensor([float(ctx.rank), 10.0 * ctx.rank]), ctx)
    shard = torch.full((2, 3), float(ctx.rank))
    gathered = gather_dim0(shard, ctx.group, dst=0, ctx=ctx)
    barrier(ctx)
    weights = gather_dim0(model.weight.detach(), ctx.group, dst=0, ctx=ctx)  # both ranks' weights, on rank 0
    if ctx.rank == 1:
        raise ValueError("rank 1 reports its own error")
    return {"weights": weights, "mean": mean, "gathered": gathered, "distributed": ctx.is_distributed}


def test_collectives_on_two_gloo_processes():
    results = launch_local(_collectives, 2, timeout_s=20, join_timeout_s=60, raise_on_error=False)
    torch.manual_seed(0)
    rank0_weight = nn.Linear(3, 2).weight.detach()
    value = results[0].value
    assert results[0].ok and value["distributed"]
    assert torch.equal(value["weights"], torch.cat([rank0_weight, rank0_weight]))  # rank 1 got rank 0's
    assert torch.equal(value["mean"], torch.tensor([0.5, 5.0]))  # (0 + 1) / 2, (0 + 10) / 2
    assert torch.equal(value["gathered"], torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))
    assert not results[1].ok and results[1].error.startswith("ValueError: rank 1 reports its own error")
