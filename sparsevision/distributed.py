"""Process groups for multi-GPU and multi-node training (torchrun), independent of the model.

    ctx = setup_distributed(timeout_s=300)     # reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
    log = get_logger("train", ctx)            # "[rank 0/8] ..."; ranks other than 0 log warnings only
    ...
    teardown_distributed(ctx)

Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) `setup_distributed` creates no process group and returns a
one-rank context, so the same script runs on a laptop. Expert parallelism (`sparsevision.moe.parallel`) builds on
this module; this module knows nothing about MoE.

Failures. Every group gets the timeout `timeout_s`: a collective that a peer never joins (a rank that crashed,
hangs, or took another branch) raises on the ranks that wait instead of hanging forever. torchrun also kills the
remaining workers as soon as one exits with an error. `collective_guard` re-raises backend errors as a
`DistributedError` that says which rank and which operation failed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_S = 600.0
BACKENDS = ("nccl", "gloo")


class DistributedError(RuntimeError):
    """A collective failed: a peer rank crashed, timed out, or did not call the same collective."""


@dataclass
class DistributedContext:
    """Where this process sits in the job. `group` is None in a one-process run (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.group is not None and self.world_size > 1

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def find_free_port() -> int:
    """A TCP port that was free a moment ago (for single-node rendezvous in tests and local launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def setup_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *, rank: int | None = None,
                      world_size: int | None = None, local_rank: int | None = None, init_method: str | None = None,
                      device: str | torch.device | None = None) -> DistributedContext:
    """Initialise the default process group from torchrun's environment (or the explicit arguments).

    backend: "nccl" (CUDA) or "gloo" (CPU); None picks nccl when CUDA is available, else gloo.
    timeout_s: how long any collective may wait for its peers before raising (also the rendezvous timeout).
    rank / world_size / local_rank / init_method override RANK / WORLD_SIZE / LOCAL_RANK / "env://" (which reads
        MASTER_ADDR and MASTER_PORT); tests spawn processes with init_method="tcp://127.0.0.1:<port>".
    device: default cuda:<local_rank> with CUDA (and made current), else cpu.
    """
    world_size = world_size if world_size is not None else _env_int("WORLD_SIZE", 1)
    rank = rank if rank is not None else _env_int("RANK", 0)
    local_rank = local_rank if local_rank is not None else _env_int("LOCAL_RANK", rank)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got world_size={world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}], got rank={rank}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got timeout_s={timeout_s}")
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got backend={backend!r}")
    if backend == "nccl" and not cuda:
        raise ValueError("backend='nccl' needs CUDA; use backend='gloo' on CPU")
    if device is None:
        device = torch.device("cuda", local_rank) if cuda and backend == "nccl" else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return DistributedContext(0, 1, local_rank, device, None, timeout_s, None)
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised; call teardown_distributed first")
    if backend == "nccl":
        # Abort the communicator and raise on timeout instead of blocking forever (the default in recent torch;
        # set here so older versions behave the same).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if init_method is None and "MASTER_ADDR" not in os.environ:
        raise ValueError("world_size > 1 but MASTER_ADDR is not set: launch with torchrun, or pass init_method")
    dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank, world_size, local_rank, device, backend, timeout_s, dist.group.WORLD)


def teardown_distributed(ctx: DistributedContext | None = None) -> None:
    """Destroy every process group (safe to call when none exists, or twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if ctx is not None:
        ctx.group = None


def new_group(ranks: list[int], ctx: DistributedContext):
    """A sub-group with the context's backend and timeout. Every rank must call this for every group, in order."""
    return dist.new_group(ranks=ranks, timeout=timedelta(seconds=ctx.timeout_s), backend=ctx.backend)


@contextlib.contextmanager
def collective_guard(what: str, ctx: DistributedContext | None = None, timeout_s: float | None = None):
    """Re-raise a failed collective as `DistributedError` naming this rank, the operation and the timeout."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:  # DistBackendError and gloo/NCCL errors are RuntimeErrors
        rank = ctx.rank if ctx is not None else (dist.get_rank() if dist.is_initialized() else 0)
        timeout = timeout_s if timeout_s is not None else (ctx.timeout_s if ctx is not None else None)
        raise DistributedError(
            f"rank {rank}: {what} failed; another rank has probably crashed, hung or run a different collective"
            f" (process-group timeout {timeout} s). Backend error: {err}") from err


class _RankPrefix(logging.Filter):
    def __init__(self, ctx: DistributedContext):
        super().__init__()
        self.prefix = f"[rank {ctx.rank}/{ctx.world_size}] "

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


def get_logger(name: str, ctx: DistributedContext, all_ranks: bool = False) -> logging.Logger:
    """A logger whose lines start with "[rank r/W]"; ranks other than 0 only log warnings and errors unless
    `all_ranks`, so a 64-GPU job prints one progress line, but every rank's errors still show."""
    logger = logging.getLogger(f"sparsevision.{name}.rank{ctx.rank}")
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(rank_prefix)s%(message)s"))
        handler.addFilter(_RankPrefix(ctx))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if (ctx.is_main or all_ranks) else logging.WARNING)
    return logger


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        with collective_guard("barrier", ctx):
            if ctx.device.type == "cuda":
                dist.barrier(device_ids=[ctx.device.index])
            else:
                dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean over ranks of a tensor (a copy; for logging losses and metrics)."""
    out = tensor.detach().clone()
    if ctx.is_distributed:
        with collective_guard("all_reduce (mean)", ctx):
            dist.all_reduce(out, group=ctx.group)
        out /= ctx.world_size
    return out


def broadcast_module_(module: nn.Module, ctx: DistributedContext, src: int = 0) -> nn.Module:
    """Copy every parameter and buffer of rank `src` to all ranks, in place (same architecture required)."""
    if ctx.is_distributed:
        with torch.no_grad(), collective_guard("broadcast of the model state", ctx):
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=src, group=ctx.group)
    return module


def shard_dim0(full: torch.Tensor, index: int, num_shards: int) -> torch.Tensor:
    """Shard `index` of `num_shards` equal slices along dim 0 (a view)."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"need 0 <= index < num_shards, got index={index} and num_shards={num_shards}")
    if full.ndim == 0 or full.shape[0] % num_shards:
        raise ValueError(f"cannot cut a tensor of shape {tuple(full.shape)} into {num_shards} equal shards along "
                         f"dim 0")
    size = full.shape[0] // num_shards
    return full[index * size:(index + 1) * size]


def gather_dim0(shard: torch.Tensor, group, dst: int = 0, ctx: DistributedContext | None = None
                ) -> torch.Tensor | None:
    """Concatenate the equal-shaped shards of every member of `group` along dim 0, on global rank `dst` (the
    other members get None). A one-member group (or no group) returns the shard itself."""
    if group is None or dist.get_world_size(group) == 1:
        return shard
    members = dist.get_world_size(group)
    shard = shard.detach().contiguous()
    gathered = [torch.empty_like(shard) for _ in range(members)] if dist.get_rank() == dst else None
    with collective_guard("gather of sharded parameters", ctx):
        dist.gather(shard, gathered, dst=dst, group=group)
    return torch.cat(gathered) if gathered is not None else None


def wrap_ddp(model: nn.Module, ctx: DistributedContext, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel on the context's device (the model itself when not distributed).

    Parameters listed in `model._ddp_params_and_buffers_to_ignore` (which `sparsevision.moe.parallel.
    shard_experts_` sets for the expert shards) are neither broadcast nor all-reduced by DDP.
    """
    if not ctx.is_distributed:
        return model
    if ctx.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [ctx.device.index])
    return nn.parallel.DistributedDataParallel(model, process_group=ctx.group, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------- local launching

@dataclass
class RankResult:
    rank: int
    ok: bool
    value: object = None
    error: str | None = None  # "ExceptionType: message" and the traceback, when not ok


def _to_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _from_bytes(payload: bytes):
    import io

    return torch.load(io.BytesIO(payload), weights_only=False)


def _launch_worker(rank, world_size, port, backend, timeout_s, threads, fn, args, queue) -> None:
    import traceback

    if threads:
        torch.set_num_threads(threads)
    ctx = None
    try:
        args = _from_bytes(args)
        ctx = setup_distributed(backend, timeout_s, rank=rank, world_size=world_size, local_rank=rank,
                                init_method=f"tcp://127.0.0.1:{port}")
        value = fn(ctx, *args)
        queue.put((rank, True, _to_bytes(value), None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which decides
        queue.put((rank, False, None, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        teardown_distributed(ctx)


def launch_local(fn, world_size: int, args: tuple = (), backend: str = "gloo", timeout_s: float = 60.0,
                 join_timeout_s: float = 120.0, threads_per_rank: int | None = 1,
                 raise_on_error: bool = True) -> list[RankResult]:
    """Run `fn(ctx, *args)` on `world_size` fresh local processes (spawn) joined in one process group; return
    each rank's result. For tests and single-node experiments; real jobs use torchrun.

    `fn` must be importable (a module-level function); `args` and the return values travel as torch.save bytes,
    i.e. as copies (multiprocessing would otherwise move tensors to shared memory, where a rank's in-place update,
    such as an optimizer step counter, would change the caller's tensor and the other ranks').
    timeout_s is the process-group timeout; join_timeout_s bounds the whole run (ranks still alive then are
    terminated and reported as failed). raise_on_error: raise `DistributedError` listing the failed ranks.
    """
    import queue as queue_module
    import time

    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got world_size={world_size}")
    context = mp.get_context("spawn")
    results_queue = context.Queue()
    payload = _to_bytes(tuple(args))
    port = find_free_port()
    procs = [context.Process(target=_launch_worker, daemon=True,
                             args=(r, world_size, port, backend, timeout_s, threads_per_rank, fn, payload,
                                   results_queue))
             for r in range(world_size)]
    for proc in procs:
        proc.start()
    results: dict[int, RankResult] = {}
    deadline = time.monotonic() + join_timeout_s
    while len(results) < world_size and time.monotonic() < deadline:
        try:
            rank, ok, payload, error = results_queue.get(timeout=0.05)
        except queue_module.Empty:
            for rank, proc in enumerate(procs):
                if rank not in results and proc.exitcode is not None and results_queue.empty():
                    results[rank] = RankResult(rank, False, error=f"process exited with code {proc.exitcode} "
                                                                  f"without reporting a result")
            continue
        results[rank] = RankResult(rank, ok, _from_bytes(payload) if ok else None, error)
    for rank, proc in enumerate(procs):
        proc.join(timeout=max(0.0, deadline - time.monotonic()) if rank in results else 0)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
            results.setdefault(rank, RankResult(rank, False, error=f"still running after {join_timeout_s} s"))
    ordered = [results[r] for r in range(world_size)]
    failed = [r for r in ordered if not r.ok]
    if failed and raise_on_error:
        raise DistributedError("; ".join(f"rank {r.rank} failed: {r.error}" for r in failed))
    return ordered
