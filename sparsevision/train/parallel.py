"""The training loop's side of data and expert parallelism (`sparsevision train --distributed` under torchrun).

The loop stays one loop; this module holds what differs with W > 1 ranks:
    start(config, ctx)          the process group: torchrun's environment, an existing group, or one process
    prepare_model(...)          shard the MoE experts across ranks (expert parallel; DDP for the rest is the loop's)
    mean_over_ranks / sum_over_ranks   one all_reduce for a step's logged metrics / an evaluation's sums
    explain_failure(err, ctx)   the error a rank raises when it, or a peer, fails

Failures. A rank whose own code raises writes "rank r: Type: message" into the process group's key-value store
(the TCPStore torchrun or init_process_group runs) before it exits. Its peers, blocked in a collective, see the
broken connection (or, for a hung rank, the process-group timeout) and raise a `DistributedError` that quotes
that note, so every rank's last line names the rank that failed and why.
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import DistributedContext, DistributedError, collective_guard, get_logger, setup_distributed
from ..utils.device import resolve_device
from .config import TrainConfig

TORCHRUN_HINT = "torchrun --nproc-per-node N -m sparsevision.cli train --distributed ..."
_FAILURE_KEY = "sparsevision/train/failed/restart{restart}/rank{rank}"
_NOTE_WAIT_S = 2.0  # how long a rank whose collective broke waits for the failing peer's note


def start(config: TrainConfig, ctx: DistributedContext | None = None) -> tuple[DistributedContext, bool]:
    """(this process's context, whether `start` created the process group, so the caller must destroy it).

    ctx given: used as it is (e.g. from `sparsevision.distributed.launch_local`). Otherwise, with
    `distributed.enabled`: an already initialised default group is adopted, else one is created from torchrun's
    environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without it: one process.
    """
    if ctx is not None:
        return ctx, False
    settings = config.distributed
    if not settings.enabled:
        return DistributedContext(), False
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        backend = str(dist.get_backend())
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        return DistributedContext(rank, dist.get_world_size(), local_rank, device, backend, settings.timeout_s,
                                  dist.group.WORLD), False
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"--distributed (distributed.enabled=true) needs the environment torchrun sets, and "
                         f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: launch with "
                         f"`{TORCHRUN_HINT}`, or drop --distributed for one process")
    kind, _, index = config.device.partition(":")
    if index:
        raise ValueError(f"device={config.device!r} names one GPU, but under --distributed rank r uses "
                         f"cuda:LOCAL_RANK; set device=cuda or auto")
    kind = resolve_device(kind).type
    local_rank = int(os.environ.get("LOCAL_RANK") or os.environ["RANK"])
    device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    backend = settings.backend if settings.backend != "auto" else ("nccl" if kind == "cuda" else "gloo")
    if backend == "nccl" and kind != "cuda":
        raise ValueError("distributed.backend=nccl needs device=cuda; use gloo on CPU")
    ctx = setup_distributed(backend, settings.timeout_s, device=device)
    return ctx, ctx.is_distributed


def check_batch(config: TrainConfig, ctx: DistributedContext) -> None:
    """Every rank must get the same whole number of micro-batches of every global batch."""
    parts = ctx.world_size * config.accum_steps
    if config.data.batch_size % parts:
        raise ValueError(f"data.batch_size={config.data.batch_size} (the global batch) is not divisible by "
                         f"world size {ctx.world_size} x accum_steps={config.accum_steps} = {parts}")


def prepare_model(model: nn.Module, ctx: DistributedContext, config: TrainConfig, *, sync_from_rank0: bool,
                  uses_grad_scaler: bool):
    """(plain model with this rank's experts, expert-parallel plan or None). Call before building the optimiser;
    wrap with `wrap_ddp` after loading a checkpoint. One process: the model unchanged."""
    from ..moe.parallel import moe_layers, shard_experts_

    if not ctx.is_distributed:
        return model, None
    ep_size = config.distributed.ep_size or None
    if not moe_layers(model):
        if ep_size is not None:
            raise ValueError(f"distributed.ep_size={ep_size}, but {config.model.name} has no MoE layer to shard")
        return model, None
    if uses_grad_scaler:
        # Each rank's GradScaler would look for inf only in its own expert gradients and could skip a step that
        # another rank takes; bf16 needs no loss scaling.
        raise ValueError("precision=fp16 is not supported with expert parallelism; use precision=bf16")
    plan = shard_experts_(model, ctx, ep_size=ep_size, sync_from_rank0=sync_from_rank0)
    return model, plan


def count_parameters(model: nn.Module, plan) -> int:
    """Parameters of the whole model, counting each expert once however the experts are sharded."""
    scale = plan.ep_size if plan is not None else 1
    return sum(p.numel() * (scale if getattr(p, "expert_parallel", False) else 1) for p in model.parameters())


def mean_over_ranks(values: dict[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Each value averaged over the ranks (identical keys on every rank), in one all_reduce."""
    if not ctx.is_distributed or not values:
        return values
    return dict(zip(values, (v / ctx.world_size for v in sum_over_ranks(list(values.values()), ctx))))


def sum_over_ranks(values: list[float], ctx: DistributedContext) -> list[float]:
    if not ctx.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    with collective_guard("all_reduce of the logged metrics", ctx):
        dist.all_reduce(tensor, group=ctx.group)
    return tensor.tolist()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistributedContext):
    """(model state_dict, optimizer state) in the one-process layout, on rank 0 (None elsewhere). Every rank must
    call it: the expert shards are gathered."""
    from ..moe.parallel import full_optimizer_state_dict, full_state_dict

    if not ctx.is_distributed:
        return model, optimizer.state_dict()
    model_state = full_state_dict(model)
    optimizer_state = full_optimizer_state_dict(optimizer)
    return (model_state, optimizer_state) if ctx.is_main else (None, None)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the global RNGs (dropout, router noise) of rank > 0, distinct per rank and per resume point."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, step, 0x5EED]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------------ failures

def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no group (any more), or a torch without this helper: no notes then
        return None


def is_collective_failure(err: BaseException) -> bool:
    """A collective that broke because of a peer (as opposed to this rank's own error)."""
    if isinstance(err, (DistributedError, dist.DistError)):
        return True
    text = str(err)
    return type(err) is RuntimeError and any(
        marker in text for marker in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out",
                                      "ProcessGroup", "c10d"))


def _failure_key(rank: int) -> str:
    # torchrun --max-restarts keeps its store across restarts: a note belongs to one attempt.
    return _FAILURE_KEY.format(restart=os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), rank=rank)


def _peer_notes(store, ctx: DistributedContext, wait_s: float) -> list[str]:
    deadline = time.monotonic() + wait_s
    while True:
        notes = []
        for rank in range(ctx.world_size):
            key = _failure_key(rank)
            try:
                if rank != ctx.rank and store.check([key]):
                    notes.append(store.get(key).decode(errors="replace"))
            except Exception:  # noqa: BLE001 - the store's host is gone: nothing more to learn
                return notes
        if notes or time.monotonic() >= deadline:
            return notes
        time.sleep(0.05)


def explain_failure(err: BaseException, ctx: DistributedContext) -> BaseException:
    """The exception this rank should raise for `err` (`err` itself when this rank is where it started).

    A rank's own error is published for its peers and logged with its rank; a broken collective becomes a
    `DistributedError` naming the rank(s) whose note explains it, or saying that none did (a hung or killed rank).
    """
    log = get_logger("train", ctx)
    store = _store()
    if is_collective_failure(err):
        notes = _peer_notes(store, ctx, _NOTE_WAIT_S) if store is not None else []
        if notes:
            return DistributedError(f"rank {ctx.rank}: stopped because {'; '.join(notes)}")
        message = str(err) if isinstance(err, DistributedError) else (
            f"rank {ctx.rank}: a collective failed (process-group timeout {ctx.timeout_s} s): {err}")
        return DistributedError(f"{message}. No rank reported an error of its own: one probably hung or was "
                                f"killed; check the logs of every rank")
    what = f"failed with {type(err).__name__}: {err}"
    log.error(what)  # "[rank r/W] failed with ..."
    note = f"rank {ctx.rank} {what}"
    if store is not None:
        try:
            store.set(_failure_key(ctx.rank), note)
        except Exception:  # noqa: BLE001 - the note is a courtesy; the error itself still propagates
            pass
    return err
