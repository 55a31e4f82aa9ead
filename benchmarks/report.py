"""docs/benchmarks.md from one `device_check.sh` run: the tables, and the issue's targets checked against them.

    python benchmarks/report.py --from <device_check output folder> --out docs/benchmarks.md

Reads moe_layer_bf16.json (required), moe_layer_peers.json and train_step.json (each optional: its section says
it was not run). Writes the device, date and commands the JSON files recorded. Targets (issue 6):
    layer    our MoE layer at >= 0.85x the dense MLP's useful TFLOP/s at equal active FLOPs, for every top-k case
             measured (E, k, capacity factor); checked for each dispatcher, "index" and "grouped"
    peers    faster than every PyTorch MoE package measured: higher useful TFLOP/s than each peer on the same
             case, within the peers step (one process, side by side); Soft MoE against soft-moe-pytorch
    train    V-MoE-B/16 training throughput >= 0.8x ViT-B/16's divided by their forward FLOP ratio, i.e.
             (V-MoE images/s / ViT images/s) x FLOP ratio >= 0.8
    dense    the dense MLP's share of the measured N^3 bf16 matmul peak; reported, called healthy at >= 50% (the
             reference point: about 416 of 780 TFLOP/s on an H100)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

LAYER_TARGET, TRAIN_TARGET, DENSE_SHARE = 0.85, 0.8, 0.5
OURS = ("index", "grouped")
PEERS = ("mixture-of-experts", "st-moe-pytorch", "soft-moe-pytorch")


def _load(folder: Path, name: str, required: bool = False) -> dict | None:
    path = folder / name
    if not path.is_file():
        if required:
            raise SystemExit(f"report.py: {path} is missing; run `bash benchmarks/device_check.sh` first")
        return None
    return json.loads(path.read_text())


def _f(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


def _cases(rows: list[dict], impl: str) -> list[tuple]:
    return sorted({(r["experts"], r["k"], r["capacity_factor"]) for r in rows if r["impl"] == impl})


def _row(rows: list[dict], impl: str, e, k, cf) -> dict:
    return next((r for r in rows if (r["impl"], r["experts"], r["k"], r["capacity_factor"]) == (impl, e, k, cf)), {})


def layer_targets(layer: dict) -> dict:
    """Per dispatcher: the smallest vs-dense ratio over the top-k cases and whether every case meets 0.85."""
    rows = layer["rows"]
    out = {}
    for impl in OURS:
        ratios = {case: _row(rows, impl, *case).get("vs_dense") for case in _cases(rows, impl)}
        measured = {c: r for c, r in ratios.items() if r is not None}
        if not measured:
            out[impl] = None
            continue
        worst = min(measured, key=measured.get)
        out[impl] = {"min": measured[worst], "at": worst, "cases": len(measured),
                     "met": len(measured) == len(ratios) and measured[worst] >= LAYER_TARGET}
    return out


def peer_targets(peers: dict) -> list[dict]:
    """Per case with a measured peer: our best TFLOP/s (index or grouped; soft for Soft MoE) against the best
    peer's."""
    rows = peers["rows"]
    out = []
    for e, k, cf in sorted({(r["experts"], r["k"], r["capacity_factor"]) for r in rows if r["impl"] in PEERS},
                           key=lambda c: tuple(-1 if v is None else v for v in c)):
        candidates = ("soft",) if k is None else OURS
        mine = {impl: _row(rows, impl, e, k, cf).get("useful_tflops") for impl in candidates}
        mine = {impl: v for impl, v in mine.items() if v}
        ours_impl = max(mine, key=mine.get) if mine else candidates[0]
        ours = mine.get(ours_impl)
        measured = {r["impl"]: r["useful_tflops"] for r in rows if r["impl"] in PEERS and r.get("useful_tflops")
                    and (r["experts"], r["k"], r["capacity_factor"]) == (e, k, cf)}
        if not measured:
            continue
        best = max(measured, key=measured.get)
        out.append({"experts": e, "k": k, "capacity_factor": cf, "ours": ours_impl, "ours_tflops": ours,
                    "peer": best, "peer_tflops": measured[best],
                    "met": ours is not None and ours > measured[best]})
    return out


def train_targets(train: dict) -> list[dict]:
    """Per V-MoE row: (V-MoE images/s / dense twin's) x FLOP ratio, against 0.8 (the target is on B/16)."""
    out, dense = [], None
    for r in train["rows"]:
        if r["kind"] == "dense":
            dense = r
            continue
        if dense is None or not r.get("images_per_s") or not dense.get("images_per_s"):
            continue
        value = r["images_per_s"] / dense["images_per_s"] * r["flop_ratio"]
        out.append({"model": r["model"], "dense": dense["model"], "value": value,
                    "target": "B/16" in r["model"], "met": value >= TRAIN_TARGET})
    return out


def report(folder: Path) -> str:
    layer = _load(folder, "moe_layer_bf16.json", required=True)
    peers, train = _load(folder, "moe_layer_peers.json"), _load(folder, "train_step.json")
    lines = ["# Benchmarks", "",
             f"Measured on {layer['device_name']} (torch {layer['torch']}, CUDA {layer.get('cuda')}) on "
             f"{layer['date'][:10]} by `bash benchmarks/device_check.sh`; written by `python benchmarks/report.py`. "
             "Each table names the command that produced it. Ratios are taken within one process, side by side.",
             "", "## Targets (issue 6)", "", "| target | measured | met |", "|---|---|---|"]
    for impl, t in layer_targets(layer).items():
        text = "not measured" if t is None else (
            f"smallest {t['min']:.3f} at E={t['at'][0]}, k={t['at'][1]}, cf={t['at'][2]} "
            f"({t['cases']} case{'s' if t['cases'] != 1 else ''})")
        lines.append(f"| MoE layer (`{impl}`) >= {LAYER_TARGET}x dense, every E, k, cf | {text} | "
                     f"{_yes(None if t is None else t['met'])} |")
    peer = peer_targets(peers) if peers else []
    if peer:
        won = sum(p["met"] for p in peer)
        worst = min(peer, key=lambda p: (p["ours_tflops"] or 0) / p["peer_tflops"])
        lines.append(f"| faster than every peer | {won} of {len(peer)} cases; closest: {worst['ours']} "
                     f"{_f(worst['ours_tflops'], '.4g')} vs {worst['peer']} {worst['peer_tflops']:.4g} TFLOP/s "
                     f"(E={worst['experts']}, k={worst['k'] or '-'}, cf={worst['capacity_factor']}) | "
                     f"{_yes(won == len(peer))} |")
    else:
        lines.append("| faster than every peer | no peer measured | - |")
    for t in (train_targets(train) if train else []):
        if t["target"]:
            lines.append(f"| {t['model']}: images/s ratio x FLOP ratio >= {TRAIN_TARGET} | {t['value']:.3f} | "
                         f"{_yes(t['met'])} |")
    peak = layer.get("matmul_peak")
    dense = {r["k"]: r.get("useful_tflops") for r in layer["rows"] if r["impl"] == "dense"}
    if peak and dense:
        shares = {k: v / peak["tflops"] for k, v in dense.items() if v}
        text = "; ".join(f"k={k}: {dense[k]:.4g} TFLOP/s = {s:.1%}" for k, s in sorted(shares.items()))
        lines.append(f"| dense MLP share of the {peak['size']}^3 {peak['dtype']} matmul peak "
                     f"({peak['tflops']:.4g} TFLOP/s) | "
                     f"{text} | {_yes(min(shares.values()) >= DENSE_SHARE)} (>= {DENSE_SHARE:.0%}) |")

    lines += ["", "## MoE layer, forward + backward", "", f"`{layer['command']}`", "",
              "Useful TFLOP/s over the dense MLP's with the same k (Soft MoE and expert choice: k=1); see "
              "benchmarks/README.md for the FLOP counts.", "",
              "| E | k | cf | dense TFLOP/s | index | grouped | einsum | dropped |",
              "|---|---|---|---|---|---|---|---|"]
    rows = layer["rows"]
    for e, k, cf in _cases(rows, "index"):
        cells = [_f(_row(rows, impl, e, k, cf).get("vs_dense")) for impl in ("index", "grouped", "einsum")]
        lines.append(f"| {e} | {k} | {cf} | {_f(dense.get(k), '.4g')} | " + " | ".join(cells)
                     + f" | {_f(_row(rows, 'grouped', e, k, cf).get('dropped'))} |")
    others = [r for r in rows if r["impl"] in ("soft", "ec_index", "ec_grouped")]
    if others:
        lines += ["", "| router | E | cf | vs dense k=1 | useful TFLOP/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['experts']} | {r['capacity_factor']} | {_f(r.get('vs_dense'))} | "
                  f"{_f(r.get('useful_tflops'), '.4g')} |" for r in others]
    if peers:
        lines += ["", "## Against the PyTorch MoE packages", "", f"`{peers['command']}`", "",
                  "| E | k | cf | ours | TFLOP/s | best peer | TFLOP/s | faster |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['experts']} | {p['k'] or '-'} | {p['capacity_factor']} | {p['ours']} | "
                  f"{_f(p['ours_tflops'], '.4g')} | {p['peer']} | {p['peer_tflops']:.4g} | {_yes(p['met'])} |"
                  for p in peer]
        skipped = sorted({r["note"] for r in peers["rows"] if r.get("note") and "ms" not in r})
        lines += [""] + [f"- not measured: {note}" for note in skipped] if skipped else []
    if train:
        lines += ["", "## Training step", "", f"`{train['command']}`", "",
                  "| model | images/s | forward GFLOP/image | FLOP ratio | images/s ratio x FLOP ratio |",
                  "|---|---|---|---|---|"]
        value = {t["model"]: t["value"] for t in train_targets(train)}
        lines += [f"| {r['model']} | {_f(r.get('images_per_s'), '.1f')} | {_f(r.get('gflops'), '.4g')} | "
                  f"{_f(r.get('flop_ratio'))} | {_f(value.get(r['model']))} |" for r in train["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="folder", required=True, help="the folder device_check.sh wrote")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    text = report(Path(args.folder))
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out)
        print(f"wrote {out}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
