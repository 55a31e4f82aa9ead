"""Images per second of a full training step (forward, backward, AdamW) of a V-MoE against its dense twin.

    python benchmarks/train_step.py                        # S/16 and B/16 pairs, batch 256, bf16 autocast, CUDA
    python benchmarks/train_step.py --device cpu --pairs test --batch-size 8 --repeats 2   # seconds, CPU
    torchrun --nproc_per_node 8 benchmarks/train_step.py --batch-size 128   # per-rank batch; experts sharded
    python benchmarks/train_step.py --dispatcher index grouped   # one V-MoE row per MoE dispatcher

The dense twin of a V-MoE is the same registered model with `moe_layers="none"`: identical backbone, head and
patch size, every MLP dense. For B/16 that is ViT-B/16 itself; for S/16 it is V-MoE's own "ViT-S" (512 wide,
8 deep, as in Riquelme et al. 2021), not DeiT's ViT-S (384 x 12), so that the pair differs only in the MoE layers.

Step: `torch.autocast(dtype)` forward (fp32 master weights), cross-entropy + the MoE auxiliary loss, backward,
AdamW (fused on CUDA). Throughput is batch / median step time. The FLOP ratio is forward FLOPs per image of the
V-MoE over its twin, from `sparsevision.utils.flops.count_flops` (eval capacity, one image): with k=2 and
capacity factor 1.05 a V-MoE layer does ~2.1x the MLP work of the dense layer it replaces. "Model TFLOP/s" is
3 x forward FLOPs x images/s (backward = 2 forward), a rough utilisation figure.

Under torchrun (WORLD_SIZE > 1) every rank runs --batch-size images, the dense twin is plain DDP and the V-MoE is
expert-parallel (`sparsevision.moe.parallel.shard_experts_`, then DDP for the rest); images/s is then the global
rate (world size x batch / step time) and rank 0 prints and writes the JSON. `--device` is ignored there (each
rank uses cuda:LOCAL_RANK, or the CPU with gloo).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DTYPES, add_common_args, environment, format_table, peak_memory_mib,  # noqa: E402
                    reset_peak_memory, resolve_device, time_step, write_json)

from sparsevision import create_model  # noqa: E402
from sparsevision.distributed import (DistributedContext, setup_distributed, teardown_distributed,  # noqa: E402
                                      wrap_ddp)
from sparsevision.moe import MoeMlp  # noqa: E402
from sparsevision.moe.parallel import shard_experts_  # noqa: E402
from sparsevision.utils.flops import count_flops  # noqa: E402

PAIRS = {"S/16": "vmoe_s16", "S/32": "vmoe_s32", "B/16": "vmoe_b16", "B/32": "vmoe_b32", "L/16": "vmoe_l16",
         "H/14": "vmoe_h14", "test": "vmoe_tiny_test"}


def build(name: str, dense: bool, args, dispatcher: str | None = None) -> torch.nn.Module:
    overrides = {"moe_layers": "none"} if dense else {}
    if args.num_experts is not None and not dense:
        overrides["num_experts"] = args.num_experts
    if dispatcher is not None and not dense:
        overrides["dispatcher"] = dispatcher
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    return create_model(name, **overrides)


def forward_flops(model: torch.nn.Module) -> int:
    """`count_flops` with every MoE layer on index dispatch: the ratio is defined on the capacity buffers whatever
    the dispatcher (grouped dispatch would be charged for the rows kept by this one zero image)."""
    layers = [m for m in model.modules() if isinstance(m, MoeMlp)]
    saved = [m.dispatcher for m in layers]
    for m in layers:
        m.dispatcher = "index"
    try:
        return count_flops(model)
    finally:
        for m, dispatcher in zip(layers, saved):
            m.dispatcher = dispatcher


def measure(model: torch.nn.Module, args, device: torch.device, ctx: DistributedContext) -> dict:
    model = model.to(device).train()
    size = model.patch_embed.img_size
    images = torch.randn(args.batch_size, model.patch_embed.in_chans, *size, device=device)
    labels = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    plan = None
    if ctx.is_distributed:
        if getattr(model, "moe_layers", ()):
            plan = shard_experts_(model, ctx)  # before the optimizer: it must see the shards
        ddp = wrap_ddp(model, ctx)
    else:
        ddp = model
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)
    forward = torch.compile(ddp) if args.compile else ddp
    dtype = DTYPES[args.dtype]
    autocast = dtype != torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            logits, aux = forward(images, return_aux=True)
            loss = F.cross_entropy(logits.float(), labels) + aux["aux_loss"].float()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    try:
        row = time_step(step, device, args.repeats, args.warmup)
    except torch.cuda.OutOfMemoryError:
        return {"note": "out of memory"}
    row["images_per_s"] = ctx.world_size * args.batch_size / (row["ms"] / 1e3)
    row["world_size"] = ctx.world_size
    row["ep_size"] = plan.ep_size if plan is not None else None
    row["peak_mib"] = peak_memory_mib(device)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return row


COLUMNS = [("model", "model", ""), ("kind", "kind", ""), ("params_m", "params M/rank", ".1f"),
           ("gflops", "fwd GFLOP/img", ".4g"), ("ms", "step ms", ".1f"), ("images_per_s", "images/s", ".1f"),
           ("model_tflops", "model TFLOP/s", ".4g"), ("peak_mib", "peak MiB", ".0f"),
           ("flop_ratio", "FLOP ratio", ".3f"), ("speed_ratio", "time ratio", ".3f"), ("note", "note", "")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["S/16", "B/16"], choices=sorted(PAIRS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-experts", type=int, default=None, help="override E (default: the registered 8)")
    parser.add_argument("--num-classes", type=int, default=None, help="override the head (default 1000)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--dispatcher", nargs="+", default=["index"], choices=["index", "grouped", "einsum"],
                        help="MoE dispatcher(s) of the V-MoE (one row each; default: index, the model default)")
    add_common_args(parser, json_default="benchmarks/results/train_step.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    ctx = setup_distributed()
    try:
        return _run(args, ctx, argv)
    finally:
        teardown_distributed(ctx)


def _run(args, ctx: DistributedContext, argv) -> dict | None:
    device = ctx.device if ctx.is_distributed else resolve_device(args.device)
    torch.manual_seed(args.seed)
    env = environment(device, __file__, argv)
    say = print if ctx.is_main else (lambda *a, **k: None)
    say(f"{env['device_name']} | torch {env['torch']} | {ctx.world_size} rank(s) x batch {args.batch_size} | "
        f"{args.dtype} autocast{' | compiled' if args.compile else ''}", flush=True)
    rows = []
    for pair in args.pairs:
        name = PAIRS[pair]
        pair_rows = []
        for kind, dense, dispatcher in [("dense", True, None)] + [("moe", False, d) for d in args.dispatcher]:
            model = build(name, dense, args, dispatcher)
            flops = forward_flops(model)
            label = f"{'ViT' if dense else 'V-MoE'}-{pair}" + (f" [{dispatcher}]" if len(args.dispatcher) > 1 and
                                                                not dense else "")
            row = {"model": label, "registered": name, "kind": kind, "dispatcher": dispatcher,
                   "gflops": flops / 1e9, **measure(model, args, device, ctx)}
            if "images_per_s" in row:
                row["model_tflops"] = 3 * flops * row["images_per_s"] / 1e12
            pair_rows.append(row)
            rows.append(row)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        dense = pair_rows[0]
        for moe in pair_rows[1:]:
            moe["flop_ratio"] = moe["gflops"] / dense["gflops"]
            if "ms" in moe and "ms" in dense:
                moe["speed_ratio"] = moe["ms"] / dense["ms"]
        say(format_table(pair_rows, COLUMNS, header=False), flush=True)
    if not ctx.is_main:
        return None
    print()
    print(format_table(rows, COLUMNS))
    print("FLOP ratio: V-MoE forward FLOPs / dense twin's; time ratio: V-MoE step time / dense twin's.")
    payload = {**env, "benchmark": "train_step", "world_size": ctx.world_size,
               "config": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows}
    path = write_json(args.json, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
