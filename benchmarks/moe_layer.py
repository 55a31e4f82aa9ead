"""Forward + backward time and achieved TFLOP/s of one MoE layer at V-MoE shapes, against a dense MLP of the same
active FLOPs, a naive per-expert loop, and the PyTorch MoE packages when installed.

    python benchmarks/moe_layer.py                                  # H100 defaults: 256 images x 196 tokens
    python benchmarks/moe_layer.py --device cpu --tokens 512 --dim 64 --hidden 128 --repeats 2   # seconds, CPU
    python benchmarks/moe_layer.py --impls dense index grouped soft   # the fast rows only
    python benchmarks/moe_layer.py --impls dense grouped --compile    # torch.compile (inductor) on every row

Rows (per number of experts E, choices per token k, capacity factor cf):
    dense        sparsevision.layers.Mlp with hidden k*H: the same useful FLOPs, no routing (the reference)
    index        MoeMlp, top-k router, IndexDispatcher (gather / scatter into padded [E, G*C] buffers, bmm)
    grouped      MoeMlp, top-k router, PackedDispatcher (kept rows only, sorted by expert, torch._grouped_mm)
    einsum       MoeMlp, top-k router, DenseDispatcher (the [G, S, E, C] one-hot einsums of the official code)
    loop         a Python loop over experts with boolean masks, no capacity limit (host syncs, ragged matmuls)
    soft         MoeMlp, Soft MoE router, slots per expert P = round(S * cf / E)
    ec_index / ec_grouped   MoeMlp, expert-choice router (each expert takes its top C = ceil(S * cf / E) tokens,
                 a multiple of 4), index or grouped dispatch
    mixture-of-experts / st-moe-pytorch / soft-moe-pytorch: lucidrains' packages (skipped if not installed;
        mixture-of-experts is top-2 only, st-moe needs k >= 2)

Useful expert FLOPs (what the table's TFLOP/s divide by): 2 matmuls x 3 (forward + backward = 1 + 2 forward
costs) x routed tokens x 2*D*H, i.e.
    top-k, loop, dense:   12 * T * k * D * H        (T tokens; the dense MLP has hidden k*H)
    soft:                 12 * (T/S) * E * P * D * H   (T/S groups of S tokens, E*P slots per group)
    expert choice:        12 * (T/S) * E * C * D * H   (every slot holds a token)
Executed FLOPs are what the expert matmuls really compute: the padded buffers 12 * (T/S) * E * C * D * H for
index / einsum (empty capacity slots included), the kept rows 12 * T * k * (1 - dropped) * D * H for grouped
(dropped = the measured fraction of token choices that found their expert full, column "dropped"). Router,
dispatch and combine FLOPs are not counted (they are overhead to minimise). "vs dense" is useful TFLOP/s over the
dense row's with the same k (the issue's target: >= 0.85); Soft MoE and expert choice are compared with k=1.
Routing groups are one image of S tokens (`--seq`, default 196 = a 224px image at patch 16; `--group-size` for
V-MoE's multi-image groups).

Peak line (CUDA by default, `--peak-size 0` turns it off): TFLOP/s of one N^3 matmul in --dtype on random data
(N = 8192), the ceiling the dense row is measured against.

Parameters and inputs are in --dtype (default bf16) unless --autocast, which keeps fp32 parameters under
torch.autocast (as mixed-precision training does; it adds the weight casts to every step).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DTYPES, add_common_args, environment, format_table, peak_memory_mib,  # noqa: E402
                    reset_peak_memory, resolve_device, time_step, write_json)

from sparsevision.layers import Mlp  # noqa: E402
from sparsevision.moe import MoeMlp, compute_capacity  # noqa: E402


class NaiveLoopMoe(nn.Module):
    """The MoE most people write first: top-k softmax gate, then for each expert select its tokens with a mask,
    run them, scatter-add back. No capacity (nothing dropped), data-dependent shapes (a host sync per expert)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, k: int):
        super().__init__()
        self.k = k
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        flat = x.reshape(-1, d)
        weight, index = self.gate(flat).float().softmax(-1).topk(self.k, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, choice = (index == e).nonzero(as_tuple=True)
            if token.numel():
                out = out.index_add(0, token, expert(flat[token]) * weight[token, choice, None].to(flat.dtype))
        return out.view(b, n, d)


def default_seq(tokens: int) -> int:
    """196 tokens per image (224px, patch 16) when it divides --tokens, else the largest divisor below 196."""
    return max(s for s in range(1, min(196, tokens) + 1) if tokens % s == 0)


def _peer(name: str, build):
    try:
        return build(), None
    except ImportError as err:
        return None, f"not installed ({err.name or err}); pip install {name}"
    except Exception as err:  # noqa: BLE001 - an unsupported setting of a third-party layer
        return None, f"{type(err).__name__}: {err}"


def build_cases(args) -> list[dict]:
    """Every row to run: a dict with its settings, FLOP counts and a `build()` (or a skip reason)."""
    t, d, h, s = args.tokens, args.dim, args.hidden, args.seq
    g = t // args.group_size
    impls = set(args.impls)
    cases = []

    def add(impl, build, e=None, k=None, cf=None, useful=None, executed=None, capacity=None):
        cases.append(dict(impl=impl, build=build, experts=e, k=k, capacity_factor=cf, capacity=capacity,
                          useful_flops=useful, executed_flops=executed))

    for k in args.k:
        if "dense" in impls:
            add("dense", lambda k=k: Mlp(d, k * h), k=k, useful=12 * t * k * d * h, executed=12 * t * k * d * h)
    for e in args.experts:
        for k in args.k:
            if k > e:
                continue
            useful = 12 * t * k * d * h
            if "loop" in impls:
                add("loop", lambda e=e, k=k: NaiveLoopMoe(d, h, e, k), e, k, None, useful, useful)
            for cf in args.capacity_factor:
                c = compute_capacity(args.group_size * k, e, cf)
                executed = 12 * g * e * c * d * h
                for impl in ("index", "einsum", "grouped"):
                    if impl in impls:
                        add(impl, lambda e=e, k=k, cf=cf, impl=impl: MoeMlp(
                            d, h, e, router="top_k", k=k, capacity_factor=cf, group_size=args.group_size,
                            dispatcher=impl), e, k, cf, useful, executed, c)
                if "peers" in impls and k == 2:
                    add("mixture-of-experts", lambda e=e, cf=cf: _import_mixture_of_experts().MoE(
                        dim=d, num_experts=e, hidden_dim=h, second_policy_train="all", second_policy_eval="all",
                        capacity_factor_train=cf, capacity_factor_eval=cf), e, k, cf, useful)
                if "peers" in impls and k >= 2:
                    add("st-moe-pytorch", lambda e=e, k=k, cf=cf: _import_st_moe().MoE(
                        dim=d, num_experts=e, expert_hidden_mult=h / d, gating_top_n=k, capacity_factor_train=cf,
                        capacity_factor_eval=cf), e, k, cf, useful)
        for cf in args.capacity_factor:
            p = compute_capacity(args.group_size, e, cf, "round", multiple_of=1)
            useful = 12 * g * e * p * d * h
            if "soft" in impls:
                add("soft", lambda e=e, p=p: MoeMlp(d, h, e, router="soft", num_slots=p,
                                                    group_size=args.group_size), e, None, cf, useful, useful, p)
            # Expert choice fills every slot: E x C tokens per group, all of them useful work.
            c = compute_capacity(args.group_size, e, cf)
            for impl in ("index", "grouped"):
                if f"ec_{impl}" in impls:
                    add(f"ec_{impl}", lambda e=e, cf=cf, impl=impl: MoeMlp(
                        d, h, e, router="expert_choice", capacity_factor=cf, group_size=args.group_size,
                        dispatcher=impl), e, None, cf, 12 * g * e * c * d * h, 12 * g * e * c * d * h, c)
            if "peers" in impls:  # routes each image (sequence) as one group
                p_seq = compute_capacity(s, e, cf, "round", multiple_of=1)
                add("soft-moe-pytorch", lambda e=e, p=p_seq: _import_soft_moe().SoftMoE(
                    dim=d, num_experts=e, num_slots=p, expert_mult=h / d), e, None, cf,
                    12 * (t // s) * e * p_seq * d * h, None, p_seq)
    return cases


def _import_mixture_of_experts():
    import mixture_of_experts

    return mixture_of_experts


def _import_st_moe():
    import st_moe_pytorch

    return st_moe_pytorch


def _import_soft_moe():
    import soft_moe_pytorch

    return soft_moe_pytorch


def run_case(case: dict, args, device: torch.device) -> dict:
    row = {key: value for key, value in case.items() if key != "build"}
    module, skip = _peer(case["impl"], case["build"])
    if module is None:
        row["note"] = skip
        return row
    dtype = DTYPES[args.dtype]
    module = raw = module.to(device=device, dtype=torch.float32 if args.autocast else dtype).train()
    if args.compile:  # compiled at the first warm-up step, so --warmup must be >= 1 to time compiled code only
        module = torch.compile(raw, backend=args.compile_backend)
    x_dtype = torch.float32 if args.autocast else dtype
    shape = (args.tokens // args.seq, args.seq, args.dim)
    x = torch.randn(shape, device=device, dtype=x_dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=args.autocast):
            out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(grad.to(out.dtype))
        for p in params:
            p.grad = None
        x.grad = None

    reset_peak_memory(device)
    try:
        row.update(time_step(step, device, args.repeats, args.warmup))
    except torch.cuda.OutOfMemoryError:
        row["note"] = "out of memory"
        return row
    except Exception as err:  # noqa: BLE001 - report and go on with the other rows
        row["note"] = f"{type(err).__name__}: {str(err)[:200]}"
        return row
    row["peak_mib"] = peak_memory_mib(device)
    if case["impl"] in ("index", "einsum", "grouped"):
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=args.autocast):
            row["dropped"] = float(raw(x)[1].dropped_fraction)
        if case["impl"] == "grouped":  # only kept rows are computed
            row["executed_flops"] = round(row["useful_flops"] * (1.0 - row["dropped"]))
    seconds = row["ms"] / 1e3
    for kind in ("useful", "executed"):
        if row.get(f"{kind}_flops"):
            row[f"{kind}_tflops"] = row[f"{kind}_flops"] / seconds / 1e12
    row["params_m"] = sum(p.numel() for p in params) / 1e6
    if args.compile:
        row["note"] = "compiled"

    return row


COLUMNS = [("impl", "impl", ""), ("experts", "E", ""), ("k", "k", ""), ("capacity_factor", "cf", ""),
           ("capacity", "C/P", ""), ("ms", "ms", ".3f"), ("useful_tflops", "useful TFLOP/s", ".4g"),
           ("vs_dense", "vs dense", ".3f"), ("executed_tflops", "executed TFLOP/s", ".4g"),
           ("dropped", "dropped", ".3f"), ("peak_mib", "peak MiB", ".0f"), ("params_m", "params M", ".1f"),
           ("note", "note", "")]


def add_dense_ratios(rows: list[dict]) -> None:
    """vs_dense = useful TFLOP/s / the dense row's with the same k (k=1 for Soft MoE)."""
    dense = {r["k"]: r["useful_tflops"] for r in rows if r["impl"] == "dense" and r.get("useful_tflops")}
    for r in rows:
        base = dense.get(r["k"] if r["k"] is not None else 1)
        if r["impl"] != "dense" and base and r.get("useful_tflops"):
            r["vs_dense"] = r["useful_tflops"] / base


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int, warmup: int) -> dict:
    """TFLOP/s of one size^3 matmul on random data (zeros run faster on some GPUs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = time_step(lambda: torch.mm(a, b), device, repeats, warmup)
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), **timing,
            "tflops": 2 * size**3 / (timing["ms"] / 1e3) / 1e12}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256 * 196, help="tokens per step (default 256 images x 196)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per image (default 196, see default_seq)")
    parser.add_argument("--group-size", type=int, default=None, help="tokens per routing group (default --seq)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=3072, help="expert hidden size H")
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--capacity-factor", type=float, nargs="+", default=[1.0, 1.25])
    impls = ["dense", "index", "grouped", "einsum", "loop", "soft", "ec_index", "ec_grouped", "peers"]
    parser.add_argument("--impls", nargs="+", default=impls, choices=impls)
    parser.add_argument("--autocast", action="store_true", help="fp32 parameters under torch.autocast(--dtype)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every row's module (the dense row too, so ratios stay fair)")
    parser.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager"],
                        help="inductor (fused kernels) or aot_eager (traced, run op by op: a quick check)")
    parser.add_argument("--peak-size", type=int, default=None,
                        help="N of the N^3 matmul peak line (default 8192 on CUDA, off on CPU; 0 = off)")
    add_common_args(parser, json_default="benchmarks/results/moe_layer.json")
    args = parser.parse_args(argv)
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1 (the first call compiles)")
    args.seq = args.seq or default_seq(args.tokens)
    args.group_size = args.group_size or args.seq
    for name in ("seq", "group_size"):
        if args.tokens % getattr(args, name):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must divide --tokens={args.tokens}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    env = environment(device, __file__, argv)
    print(f"{env['device_name']} | torch {env['torch']} | {args.tokens} tokens ({args.tokens // args.seq} x "
          f"{args.seq}), group {args.group_size}, D={args.dim}, H={args.hidden}, {args.dtype}"
          f"{' autocast' if args.autocast else ''}", flush=True)
    rows = []
    for case in build_cases(args):
        row = run_case(case, args, device)
        rows.append(row)
        if "ms" in row:
            print(format_table([row], COLUMNS[:-1], header=False), flush=True)
    add_dense_ratios(rows)
    missing = sorted({r["note"] for r in rows if str(r.get("note", "")).startswith("not installed")})
    print()
    print(format_table([r for r in rows if r.get("note") not in missing], COLUMNS))
    for note in missing:
        print(f"skipped: {note}")
    peak_size = args.peak_size if args.peak_size is not None else (8192 if device.type == "cuda" else 0)
    peak = None
    if peak_size:
        peak = matmul_peak(device, DTYPES[args.dtype], peak_size, args.repeats, args.warmup)
        line = f"peak: {peak_size}^3 {args.dtype} matmul {peak['tflops']:.4g} TFLOP/s"
        for r in rows:
            if r["impl"] == "dense" and r.get("useful_tflops"):
                share = r["useful_tflops"] / peak["tflops"]
                line += f"; dense k={r['k']} fwd+bwd {r['useful_tflops']:.4g} = {share:.1%} of it"
        print(line)
    config = {k: v for k, v in vars(args).items() if k != "json"}
    payload = {**env, "benchmark": "moe_layer", "config": config,
               "flops": "useful = 12*T*k*D*H (top-k, loop, dense with hidden k*H); 12*(T/S)*E*P*D*H (soft); "
                        "executed: padded buffers 12*(T/S)*E*C*D*H (index, einsum), kept rows "
                        "12*T*k*(1-dropped)*D*H (grouped)",
               "matmul_peak": peak, "rows": rows}
    path = write_json(args.json, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
