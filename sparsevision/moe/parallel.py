"""Expert parallelism: each rank keeps E / P of every MoE layer's experts and exchanges token buffers all-to-all.

This is the layout of V-MoE and GShard (Lepikhin et al. 2020, Sec. 2.2; official vmoe `moe.py`,
`_dispatch` with `jax.lax.all_to_all`): data parallel everywhere, except that the experts are split across the P
ranks of an *expert-parallel group*. Ranks are cut into R = W / P groups of P consecutive ranks (on one node when
P <= GPUs per node, so the all-to-all stays on NVLink); member p of every group holds experts
[p * E/P, (p+1) * E/P) of every MoE layer, so each expert has R replicas, one per group.

Forward of one MoE layer on rank r (T = local groups x capacity):
    router + dispatch (local, as `MoeMlp`)                  [E, T, D]
    all-to-all in the group: block p of the E axis -> p     [P, E/P, T, D]: my experts, every member's tokens
    local experts on [E/P, P*T, D]                          (one batched matmul per layer, as `Experts`)
    all-to-all back                                          [E, T, D]
    combine (local)
The backward runs the same two exchanges in reverse (`_AllToAll` is its own adjoint).

Gradients, for exact equivalence with one process on the global batch (loss = mean over ranks, the DDP
convention): non-expert parameters are all-reduced and averaged by DDP; expert shards are excluded from DDP (their
shapes and values differ per rank). An expert's raw gradient on its rank is the *sum* over the P group members'
losses (their tokens came to it), so it is scaled by 1/P, then averaged over its R replicas:
(1/R) sum_groups (1/P) sum_members = (1/W) sum_ranks, which is what DDP gives a replicated parameter.

Checkpoints are always in the one-process layout (full [E, ...] tensors, same names): `full_state_dict` gathers
the shards and `load_full_state_dict_` slices them, so a checkpoint saved on N ranks loads on M (including 1);
`full_optimizer_state_dict` / `load_full_optimizer_state_dict_` do the same for AdamW's moments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import (DistributedContext, broadcast_module_, collective_guard, gather_dim0, new_group, shard_dim0,
                           unwrap)
from .experts import Experts
from .layer import MoeMlp

EXPERT_PARAMS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


@dataclass
class ExpertParallelPlan:
    """How experts are laid out over the W ranks (see the module docstring)."""

    world_size: int
    ep_size: int  # P: ranks that share one copy of the experts
    ep_rank: int  # this rank's position p in its expert-parallel group
    ep_group: object | None  # the P ranks of this rank's group (None when P == 1)
    replica_group: object | None  # the R ranks holding the same expert shard (None when R == 1)
    ctx: DistributedContext

    def __deepcopy__(self, memo) -> "ExpertParallelPlan":
        # Process groups cannot be copied, and a copy of the model (an EMA, say) lives on the same ranks.
        return self

    @property
    def num_replicas(self) -> int:
        return self.world_size // self.ep_size

    @property
    def ep_root(self) -> int:
        """Global rank of member 0 of this rank's expert-parallel group."""
        return self.ctx.rank - self.ep_rank


def make_plan(ctx: DistributedContext, ep_size: int) -> ExpertParallelPlan:
    """Create the expert-parallel and replica groups (every rank must call this, with the same ep_size)."""
    w = ctx.world_size
    if ep_size < 1 or w % ep_size:
        raise ValueError(f"ep_size must divide the world size {w}, got ep_size={ep_size}")
    ep_group = replica_group = None
    # Dedicated groups even when one spans the world, so the expert exchanges and the replica all-reduces never
    # interleave with DDP's all-reduces on the default group. new_group is collective over the whole world: every
    # rank creates every group, in the same order.
    for start in range(0, w, ep_size):
        ranks = list(range(start, start + ep_size))
        group = new_group(ranks, ctx) if len(ranks) > 1 else None
        if ctx.rank in ranks:
            ep_group = group
    for p in range(ep_size):
        ranks = list(range(p, w, ep_size))
        group = new_group(ranks, ctx) if len(ranks) > 1 else None
        if ctx.rank in ranks:
            replica_group = group
    return ExpertParallelPlan(w, ep_size, ctx.rank % ep_size, ep_group, replica_group, ctx)


class _AllToAll(torch.autograd.Function):
    """Block i of dim 0 goes to group member i; block j of the result came from member j. The exchange is a
    permutation whose transpose is itself, so the backward is the same all-to-all on the gradient."""

    @staticmethod
    def forward(fctx, x: torch.Tensor, group, what: str, ctx: DistributedContext) -> torch.Tensor:
        fctx.group, fctx.what, fctx.ctx = group, what, ctx
        x = x.contiguous()
        out = torch.empty_like(x)
        with collective_guard(what, ctx):
            dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(fctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        with collective_guard(f"{fctx.what} (backward)", fctx.ctx):
            dist.all_to_all_single(out, grad, group=fctx.group)
        return out, None, None, None


def all_to_all(x: torch.Tensor, group, what: str = "all_to_all", ctx: DistributedContext | None = None):
    """Differentiable equal-split all-to-all along dim 0 (gloo and NCCL both implement `all_to_all_single`)."""
    return _AllToAll.apply(x, group, what, ctx)


class ExpertParallelExperts(Experts):
    """The local E/P experts of an `Experts` layer; takes and returns the full [E, T, D] buffers of this rank.

    Parameter names are those of `Experts` (fc1_weight [E/P, D, H], ...), so a sharded state_dict differs from the
    one-process one only in the leading dimension.
    """

    def __init__(self, full: Experts, plan: ExpertParallelPlan, name: str = "experts"):
        e, p = full.num_experts, plan.ep_size
        if e % p:
            raise ValueError(f"{name}: num_experts={e} is not divisible by the expert-parallel size ep_size={p}")
        super().__init__(e // p, full.dim, full.hidden_dim, full.out_dim, dropout=full.dropout.p,
                         gelu_approximate=full.gelu_approximate)
        self.num_global_experts, self.plan, self.name = e, plan, name
        # The all-to-all exchanges fixed-size [E, T, D] buffers; MoeMlp uses index dispatch for sharded experts.
        self.supports_packed = p == 1
        self.first_expert = plan.ep_rank * (e // p)
        with torch.no_grad():
            for attr in EXPERT_PARAMS:
                getattr(self, attr).copy_(shard_dim0(getattr(full, attr), plan.ep_rank, p))
        self.to(device=full.fc1_weight.device, dtype=full.fc1_weight.dtype)
        for param in self.parameters():
            param.expert_parallel = True  # read by clip_grad_norm_ and the checkpoint helpers
            param.expert_plan = plan
            if p > 1:
                # An expert's gradient sums the losses of the P group members whose tokens it served; dividing by
                # P gives DDP's convention (the gradient of the mean loss over ranks).
                param.register_hook(lambda g, p=p: g / p)
            if plan.replica_group is not None:
                param.register_post_accumulate_grad_hook(self._average_over_replicas)

    def _average_over_replicas(self, param: torch.Tensor) -> None:
        # After accumulation: averaging the running sum each micro-batch still gives the sum of the averages.
        with collective_guard(f"{self.name}: gradient all_reduce over expert replicas", self.plan.ctx):
            dist.all_reduce(param.grad, group=self.plan.replica_group)
        param.grad /= self.plan.num_replicas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, p = self.num_global_experts, self.plan.ep_size
        if x.ndim != 3 or x.shape[0] != e or x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: expert input must be [{e}, tokens, {self.dim}], got {tuple(x.shape)}")
        if p == 1:
            return super().forward(x)
        if torch.is_autocast_enabled(x.device.type):
            # The expert matmuls would cast to the autocast dtype anyway; casting first halves the traffic.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        _, t, d = x.shape
        group, ctx = self.plan.ep_group, self.plan.ctx
        received = all_to_all(x, group, f"{self.name}: token all_to_all", ctx)  # [P*E/P, T, D], member-major
        local_in = received.view(p, e // p, t, d).transpose(0, 1).reshape(e // p, p * t, d)
        y = super().forward(local_in)  # [E/P, P*T, D']
        d_out = y.shape[-1]
        send = y.view(e // p, p, t, d_out).transpose(0, 1).reshape(e, t, d_out)
        return all_to_all(send, group, f"{self.name}: expert-output all_to_all", ctx)


def moe_layers(model: nn.Module) -> dict[str, MoeMlp]:
    """Qualified name -> MoE layer, in module order."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, MoeMlp)}


def expert_parallel_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Qualified name -> expert-shard parameter (empty when the model is not sharded)."""
    return {name: p for name, p in unwrap(model).named_parameters() if getattr(p, "expert_parallel", False)}


def default_ep_size(model: nn.Module, world_size: int) -> int:
    """The largest P dividing both the world size and every MoE layer's number of experts."""
    size = world_size
    for layer in moe_layers(model).values():
        size = math.gcd(size, layer.num_experts)
    return size


def shard_experts_(model: nn.Module, ctx: DistributedContext, ep_size: int | None = None,
                   sync_from_rank0: bool = True) -> ExpertParallelPlan | None:
    """Replace every MoE layer's experts by this rank's shard (in place); return the plan (None if one process).

    Call on the plain model, before `wrap_ddp` and before building the optimiser.
    ep_size: P, ranks sharing one copy of the experts; default `default_ep_size` (W when W divides every E).
    sync_from_rank0: first copy rank 0's full model to every rank, so the sharded job starts from exactly the
        model rank 0 built (otherwise every rank must have built identical weights, e.g. from the same seed).
    The expert shards are added to `model._ddp_params_and_buffers_to_ignore`, so DDP leaves them alone.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("shard_experts_ needs the plain model: shard first, then wrap_ddp")
    if not ctx.is_distributed:
        return None
    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MoeMlp layer to shard")
    if expert_parallel_params(model):
        raise ValueError("the model's experts are already sharded")
    ep_size = ep_size if ep_size is not None else default_ep_size(model, ctx.world_size)
    if ep_size < 1 or ctx.world_size % ep_size:
        raise ValueError(f"ep_size must divide the world size {ctx.world_size}, got ep_size={ep_size}")
    for name, layer in layers.items():  # checked before any collective, so every rank fails the same way
        if layer.num_experts % ep_size:
            raise ValueError(f"{name or 'the MoE layer'}: num_experts={layer.num_experts} is not divisible by "
                             f"ep_size={ep_size}")
    plan = make_plan(ctx, ep_size)
    if sync_from_rank0:
        broadcast_module_(model, ctx)
    for name, layer in layers.items():
        layer.experts = ExpertParallelExperts(layer.experts, plan, name=f"{name}.experts" if name else "experts")
    ignore = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ())) | set(expert_parallel_params(model))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignore))
    return plan


def _plan_of(model: nn.Module) -> ExpertParallelPlan | None:
    for m in unwrap(model).modules():
        if isinstance(m, ExpertParallelExperts):
            return m.plan
    return None


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float, ctx: DistributedContext | None = None) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the *global* model: the squared norms of the expert shards are summed
    over the expert-parallel group, so every rank finds the one-process norm and applies the same scale (a local
    norm would clip replicated parameters differently on each rank and make them drift apart)."""
    model = unwrap(model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    plan = _plan_of(model)
    if plan is None or plan.ep_group is None:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    sharded = [p.grad for p in model.parameters() if p.grad is not None and getattr(p, "expert_parallel", False)]
    shared = [p.grad for p in model.parameters() if p.grad is not None and not getattr(p, "expert_parallel", False)]
    device = grads[0].device if grads else torch.device("cpu")

    def sq(gs):
        return (torch.stack([g.to(torch.promote_types(g.dtype, torch.float32)).square().sum() for g in gs]).sum()
                if gs else torch.zeros((), device=device))

    expert_sq = sq(sharded)
    with collective_guard("all_reduce of the expert gradient norm", plan.ctx):
        dist.all_reduce(expert_sq, group=plan.ep_group)
    total = (sq(shared) + expert_sq).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


# ------------------------------------------------------------------------------------------------- checkpoints

def _shard_modules(model: nn.Module) -> dict[str, ExpertParallelExperts]:
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, ExpertParallelExperts)}


def full_state_dict(model: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor] | None:
    """The one-process state_dict (CPU tensors, full [E, ...] experts) on rank 0, None on the other ranks (or on
    every rank with `all_ranks`). Every rank must call it. Loads into an unsharded model with `load_state_dict`."""
    model = unwrap(model)
    shards = _shard_modules(model)
    plan = next(iter(shards.values())).plan if shards else None
    keep = all_ranks or plan is None or plan.ctx.rank == 0
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner, _, attr = key.rpartition(".")
        if owner in shards and attr in EXPERT_PARAMS:
            # Group 0 holds every expert once; the other groups hold replicas of the same values.
            full = None
            if plan.ep_root == 0:
                full = gather_dim0(value, plan.ep_group, dst=0, ctx=plan.ctx)
            if all_ranks:
                full = _broadcast_from_rank0(full, value, plan)
            value = full
        if keep:
            out[key] = value.detach().cpu().clone()
    return out if keep else None


def _broadcast_from_rank0(full: torch.Tensor | None, shard: torch.Tensor, plan: ExpertParallelPlan) -> torch.Tensor:
    shape = (shard.shape[0] * plan.ep_size, *shard.shape[1:])
    buf = full.contiguous() if full is not None else shard.new_empty(shape)
    with collective_guard("broadcast of the gathered experts", plan.ctx):
        dist.broadcast(buf, src=0, group=plan.ctx.group)
    return buf


@torch.no_grad()
def load_full_state_dict_(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True):
    """Load a one-process state_dict (full [E, ...] experts, e.g. saved by one rank, or by `full_state_dict` on N
    ranks) into a possibly sharded model: each rank keeps the slice of the experts it holds. No communication."""
    model = unwrap(model)
    shards = _shard_modules(model)
    local = {}
    for key, value in state.items():
        owner, _, attr = key.rpartition(".")
        if owner in shards and attr in EXPERT_PARAMS:
            m = shards[owner]
            if value.ndim == 0 or value.shape[0] != m.num_global_experts:
                raise ValueError(f"{key}: expected a full tensor with {m.num_global_experts} experts along dim 0, "
                                 f"got shape {tuple(value.shape)}")
            value = shard_dim0(value, m.plan.ep_rank, m.plan.ep_size)
        local[key] = value
    return model.load_state_dict(local, strict=strict)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # optimizer.state_dict() numbers the parameters in param_groups order.
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state_dict(optimizer: torch.optim.Optimizer, all_ranks: bool = False) -> dict | None:
    """`optimizer.state_dict()` with every per-parameter state tensor of an expert shard (AdamW's exp_avg,
    exp_avg_sq) gathered to the full [E, ...] shape: the state one process would hold. Rank 0 gets it (every rank
    with `all_ranks`), the others None. Every rank must call it. As with `optimizer.state_dict()`, the tensors of
    non-expert parameters are the optimizer's live tensors: save (or copy) before the next step."""
    state = optimizer.state_dict()
    params = _optimizer_params(optimizer)
    plan = None
    for index, param in enumerate(params):
        if not getattr(param, "expert_parallel", False):
            continue
        plan = _param_plan(param)
        if index not in state["state"]:
            continue
        # state_dict() hands out the optimizer's live per-parameter dicts: replace, never edit them.
        per_param = state["state"][index] = dict(state["state"][index])
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                full = gather_dim0(value, plan.ep_group, dst=0, ctx=plan.ctx) if plan.ep_root == 0 else None
                if all_ranks:
                    full = _broadcast_from_rank0(full, value, plan)
                per_param[name] = full
    if plan is not None and not all_ranks and plan.ctx.rank != 0:
        return None
    return state


def load_full_optimizer_state_dict_(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a one-process optimizer state (see `full_optimizer_state_dict`) into the optimizer of a sharded model,
    slicing the expert moments like the parameters. The optimizer must list parameters in the same order."""
    params = _optimizer_params(optimizer)
    local = {"param_groups": state["param_groups"], "state": {}}
    for index, per_param in state["state"].items():
        index = int(index)
        if index >= len(params):
            raise ValueError(f"optimizer state has parameter {index}, but the optimizer holds {len(params)}")
        param = params[index]
        # Copies: torch's load_state_dict keeps tensors that already have the right dtype and device, and the
        # optimizer would then update the caller's state dict in place.
        per_param = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in per_param.items()}
        if getattr(param, "expert_parallel", False):
            plan = _param_plan(param)
            full_shape = (param.shape[0] * plan.ep_size, *param.shape[1:])
            for name, value in per_param.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    if tuple(value.shape) != full_shape:
                        raise ValueError(f"optimizer state {name!r} of parameter {index}: expected the full shape "
                                         f"{full_shape}, got {tuple(value.shape)}")
                    per_param[name] = shard_dim0(value, plan.ep_rank, plan.ep_size)
        local["state"][index] = per_param
    optimizer.load_state_dict(local)


def _param_plan(param: torch.Tensor) -> ExpertParallelPlan:
    plan = getattr(param, "expert_plan", None)
    if plan is None:
        raise ValueError("expert parameter without a plan; was it created by shard_experts_?")
    return plan
