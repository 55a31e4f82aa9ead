"""Memory per rank of the parameters and AdamW state of V-MoE S/B/L/H under expert parallelism (computed).

    python benchmarks/memory_table.py                      # markdown table for docs/scaling.md
    python benchmarks/memory_table.py --world-sizes 1 8 16 64 --experts 8 32 --json memory.json

Models are built on the meta device (no memory, no compute) to count parameters exactly. Per parameter, fp32
training keeps 16 bytes: the weight (4), its gradient (4) and AdamW's two moments (4 + 4). With W ranks the
experts of every MoE layer are split over P = gcd(W, E) ranks (`sparsevision.moe.parallel.default_ep_size`) and
everything else is replicated, so

    bytes per rank = 16 * (shared params + expert params / P)

This is computed, not measured: activations, the all-to-all buffers, DDP's gradient buckets (about one more copy
of the shared gradients), the CUDA context and allocator fragmentation all come on top.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from sparsevision import create_model
from sparsevision.moe.parallel import EXPERT_PARAMS

SIZES = {"S/16": "vmoe_s16", "B/16": "vmoe_b16", "L/16": "vmoe_l16", "H/14": "vmoe_h14"}
BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq


def count(name: str, num_experts: int, moe_layers: str) -> tuple[int, int]:
    """(shared, expert) parameter counts of a registered V-MoE, built on the meta device."""
    with torch.device("meta"):
        model = create_model(name, num_experts=num_experts, moe_layers=moe_layers)
    expert = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[2] in EXPERT_PARAMS
                 and ".experts." in n)
    total = sum(p.numel() for p in model.parameters())
    return total - expert, expert


def table(experts: list[int], world_sizes: list[int], moe_layers: str) -> list[dict]:
    rows = []
    for size, name in SIZES.items():
        for e in experts:
            shared, expert = count(name, e, moe_layers)
            row = {"model": f"V-MoE-{size}", "experts": e, "moe_layers": moe_layers,
                   "params_m": (shared + expert) / 1e6, "expert_params_m": expert / 1e6}
            for w in world_sizes:
                p = math.gcd(w, e)
                row[f"gib_w{w}"] = BYTES_PER_PARAM * (shared + expert / p) / 2**30
                row[f"ep_w{w}"] = p
            rows.append(row)
    return rows


def markdown(rows: list[dict], world_sizes: list[int]) -> str:
    head = ["model", "E", "params (M)", "expert params (M)"] + [f"W={w}" for w in world_sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["experts"]), f"{r['params_m']:.0f}", f"{r['expert_params_m']:.0f}"]
        cells += [f"{r[f'gib_w{w}']:.2f} GiB (P={r[f'ep_w{w}']})" for w in world_sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--moe-layers", default="every-2", help="placement (V-MoE's JFT models: every-2)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = table(args.experts, args.world_sizes, args.moe_layers)
    print(markdown(rows, args.world_sizes))
    print(f"\nComputed (not measured): 16 bytes per parameter (fp32 weight, gradient, AdamW moments), experts split "
          f"over P = gcd(W, E) ranks, MoE in {args.moe_layers} blocks; activations and buffers excluded.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
