"""Everything a GPU session should run for the MoE fast path, in one call: `bash benchmarks/device_check.sh`.

Steps (each a subprocess with its own time limit, so one hang or crash does not lose the others):
    tests       pytest tests/moe: the GPU checks of the packed path (test_moe_grouped_gpu.py) and the CPU MoE
                suite under the machine's torch (less test_parallel.py, multi-process and CPU-only)
    layer       benchmarks/moe_layer.py at the issue's shapes: 50,176 tokens (256 x 196), D=768, H=3072,
                E in {8, 32}, k in {1, 2}, cf in {1.0, 1.25}, bf16 parameters: dense, index, grouped, einsum, soft,
                expert choice (index and grouped), plus the 8192^3 matmul peak line
    peers       the same shapes: dense, index, grouped, soft, the naive loop and the PyTorch MoE packages
                (mixture-of-experts, st-moe-pytorch, soft-moe-pytorch), installed from the wheels under .whl/
                (benchmarks/fetch_peer_wheels.sh; the device tool carries them with carry=[".whl"])
    train       benchmarks/train_step.py, S/16 and B/16 at batch 256 (tens of GB of activations in bf16 autocast),
                V-MoE with index and grouped dispatch
    autocast    the layer step with fp32 parameters under bf16 autocast (what training does): dense, index, grouped
    groups      V-MoE's 8-image routing groups (--group-size 1568): dense, index, grouped
    gmm         the expert matmuls alone: dense mm vs torch._grouped_mm (weights as stored and K-major) vs padded
                bmm, forward and weight-gradient shapes, 50,176 and 100,352 rows, E in {8, 32}
    profile     torch.profiler table of one fwd+bwd of the grouped and the index layer (E=8, k=2, cf=1.25)
    compile     dense and grouped under torch.compile (inductor), E=8, k=2, cf=1.25
Steps run in this order until --budget is spent. Then a summary table (printed last). Files under --out:
device_check.log, pytest_gpu.xml, moe_layer_bf16.json, moe_layer_peers.json, train_step.json,
moe_layer_autocast.json, moe_layer_groups.json, gmm.json, profile.txt, moe_layer_compiled.json, and benchmarks.md
(benchmarks/report.py: the tables and the issue's targets checked, the draft of docs/benchmarks.md).

`--cpu-smoke` runs the benchmark steps in-process at tiny shapes on the CPU (no pytest: the suite runs those tests
itself); tests/test_benchmarks.py covers it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SHAPES = ["--tokens", "50176", "--dim", "768", "--hidden", "3072", "--experts", "8", "32", "--k", "1", "2",
          "--capacity-factor", "1.0", "1.25"]
SMOKE_SHAPES = ["--device", "cpu", "--tokens", "256", "--dim", "32", "--hidden", "64", "--experts", "4", "--k",
                "2", "--capacity-factor", "1.25", "--repeats", "1", "--warmup", "0", "--dtype", "fp32"]


def steps(out: Path, smoke: bool) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, argv after `python`)."""
    shapes = SMOKE_SHAPES if smoke else SHAPES
    layer = [str(BENCH / "moe_layer.py"), *shapes] + ([] if smoke else ["--repeats", "10", "--warmup", "3"])
    fast = ["--impls", "dense", "index", "grouped"]
    profile = [str(BENCH / "device_check.py"), "profile", "--out", str(out / "profile.txt")]
    kernels = [str(BENCH / "device_check.py"), "gmm", "--json", str(out / "gmm.json")]
    train = [str(BENCH / "train_step.py"), "--dispatcher", "index", "grouped", "--json", str(out / "train_step.json")]
    if smoke:
        profile += ["--device", "cpu", "--tokens", "256", "--dim", "32", "--hidden", "64"]
        kernels += ["--device", "cpu", "--rows", "256", "--dim", "32", "--hidden", "64", "--experts", "4",
                    "--repeats", "1"]
        train += ["--device", "cpu", "--pairs", "test", "--batch-size", "2", "--repeats", "1", "--warmup", "0",
                  "--dtype", "fp32"]
    else:
        train += ["--pairs", "S/16", "B/16", "--batch-size", "256", "--repeats", "8"]
    plan = [
        ("layer", 120, layer + ["--impls", "dense", "index", "grouped", "einsum", "soft", "ec_index", "ec_grouped",
                                "--peak-size",
                                "256" if smoke else "8192", "--json", str(out / "moe_layer_bf16.json")]),
        # The naive loop and the PyTorch MoE packages (from .whl/, see peer_site) against the same dense rows.
        ("peers", 100, layer + ["--impls", "dense", "index", "grouped", "soft", "loop", "peers",
                                "--peak-size", "0", "--json", str(out / "moe_layer_peers.json")]),
        ("train", 150, train),
        ("autocast", 60, layer + fast + ["--autocast", "--dtype", "bf16",
                                         "--json", str(out / "moe_layer_autocast.json")]),
        ("groups", 60, layer + fast + ["--group-size", "256" if smoke else "1568",
                                       "--json", str(out / "moe_layer_groups.json")]),
        ("gmm", 40, kernels),
        ("profile", 40, profile),
        # torch.compile (inductor) on dense and grouped alike, one shape: does fusing the router's small ops pay?
        ("compile", 90, [str(BENCH / "moe_layer.py"), *shapes, "--impls", "dense", "grouped", "--compile",
                         "--json", str(out / "moe_layer_compiled.json")]
         + (["--repeats", "1", "--warmup", "1", "--k", "2", "--compile-backend", "aot_eager"] if smoke
            else ["--repeats", "10", "--warmup", "3", "--experts", "8", "--k", "2", "--capacity-factor", "1.25"])),
    ]
    if not smoke:
        # The CPU MoE suite too (the machine's torch may differ from CI's), less the multi-process parallel tests.
        tests = ["-m", "pytest", "-q", "-rs", str(ROOT / "tests/moe"),
                 "--ignore", str(ROOT / "tests/moe/test_parallel.py"), f"--junitxml={out / 'pytest_gpu.xml'}",
                 "-p", "no:cacheprovider"]
        plan.insert(0, ("tests", 100, tests))
    return plan


def peer_site(wheels: Path, log) -> str | None:
    """Install the wheels in `wheels` (benchmarks/fetch_peer_wheels.sh) into a temporary folder and return it, for
    the `peers` step's PYTHONPATH only; None when there are none or pip fails (the rows then say "not installed")."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        log.write(f"peers: no wheels under {wheels} (benchmarks/fetch_peer_wheels.sh), peer rows will be skipped\n")
        return None
    site = tempfile.mkdtemp(prefix="sparsevision-peers-")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", site, *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    log.write(f"peers: pip install of {len(files)} wheels into {site}: exit {proc.returncode}\n{proc.stdout}")
    return site if proc.returncode == 0 else None


def run_step(name: str, limit: int, argv: list[str], log, smoke: bool, extra_path: str | None = None) -> dict:
    start = time.monotonic()
    log.write(f"\n===== {name}: python {' '.join(argv)}\n")
    log.flush()
    if smoke:  # in-process: import the script and call its main
        status = _run_in_process(argv)
    else:
        env = dict(os.environ)
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run([sys.executable, *argv], cwd=ROOT, timeout=limit, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env)
            log.write(proc.stdout)
            print(proc.stdout[-4000:], flush=True)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as err:
            log.write((err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""))
            status = f"timed out after {limit} s"
    seconds = time.monotonic() - start
    log.write(f"===== {name}: {status} ({seconds:.0f} s)\n")
    log.flush()
    print(f"===== {name}: {status} ({seconds:.0f} s)", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1)}


def _run_in_process(argv: list[str]) -> str:
    import importlib.util

    script = Path(argv[0])
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"device_check_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(argv[1:])
        return "ok"
    except (Exception, SystemExit) as err:  # noqa: BLE001 - report and go on, as the subprocess mode does
        return f"error: {type(err).__name__}: {err}"
    finally:
        sys.path.remove(str(BENCH))


# ------------------------------------------------------------------------------------------------------ profile

def profile(argv: list[str] | None = None) -> None:
    """Kernel table of one fwd+bwd of MoeMlp with grouped and with index dispatch."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from sparsevision.moe import MoeMlp

    parser = argparse.ArgumentParser(prog="device_check.py profile")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=50176)
    parser.add_argument("--seq", type=int, default=196)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    seq = args.seq if args.tokens % args.seq == 0 else args.tokens
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    report = []
    for impl in ("grouped", "index"):
        torch.manual_seed(0)
        layer = MoeMlp(args.dim, args.hidden, args.experts, k=args.k, capacity_factor=args.capacity_factor,
                       dispatcher=impl).to(device=device, dtype=dtype).train()
        x = torch.randn(args.tokens // seq, seq, args.dim, device=device, dtype=dtype, requires_grad=True)

        def step():
            y, metrics = layer(x)
            (y.float().square().mean() + metrics.aux_loss).backward()

        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with torch_profile(activities=activities) as prof:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)
        report.append(f"### {impl}: E={args.experts} k={args.k} cf={args.capacity_factor} tokens={args.tokens} "
                      f"D={args.dim} H={args.hidden} {dtype}\n{table}")
    text = "\n\n".join(report)
    Path(args.out).write_text(text + "\n")
    print(text)


# ------------------------------------------------------------------------------------------------- gmm kernels

def gmm(argv: list[str] | None = None) -> None:
    """TFLOP/s of the expert matmuls alone at equal FLOPs: one dense mm over all rows, torch._grouped_mm with the
    weights as stored ([E, K, N], N-major) and K-major (a transposed copy), and bmm over buffers padded by the
    capacity factor; forward (x @ W) and weight-gradient (x^T dy per expert) shapes."""
    import torch

    sys.path.insert(0, str(BENCH))
    from common import time_step, write_json

    parser = argparse.ArgumentParser(prog="device_check.py gmm")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, nargs="+", default=[50176, 100352])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--padding", type=float, default=1.25, help="padded rows / rows for the bmm variant")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    results = []
    for rows in args.rows:
        for e in args.experts:
            # Uneven but realistic expert loads: multinomial counts around rows / E.
            counts = torch.bincount(torch.randint(0, e, (rows,)), minlength=e)
            offs = counts.cumsum(0).to(device=device, dtype=torch.int32)
            padded = int(math.ceil(rows / e * args.padding))
            for k_dim, n_dim, what in ((args.dim, args.hidden, "fc1"), (args.hidden, args.dim, "fc2")):
                x = torch.randn(rows, k_dim, device=device, dtype=dtype)
                dy = torch.randn(rows, n_dim, device=device, dtype=dtype)
                w = torch.randn(e, k_dim, n_dim, device=device, dtype=dtype)
                w_kmajor = w.transpose(1, 2).contiguous().transpose(1, 2)
                dense_w = w[0]
                x_pad = torch.randn(e, padded, k_dim, device=device, dtype=dtype)
                flops = 2 * rows * k_dim * n_dim
                variants = {
                    "mm (dense, same rows)": lambda: torch.mm(x, dense_w),
                    "grouped_mm, W [E,K,N]": lambda: torch._grouped_mm(x, w, offs=offs),
                    "grouped_mm, W K-major": lambda: torch._grouped_mm(x, w_kmajor, offs=offs),
                    f"bmm, rows x{args.padding}": lambda: torch.bmm(x_pad, w),
                    "grouped_mm dW (x^T dy)": lambda: torch._grouped_mm(x.t(), dy, offs=offs),
                    "mm dW (dense x^T dy)": lambda: torch.mm(x.t(), dy),
                }
                for name, fn in variants.items():
                    try:
                        t = time_step(fn, device, args.repeats, 3)
                        results.append({"rows": rows, "experts": e, "layer": what, "variant": name, **t,
                                        "tflops": flops / (t["ms"] / 1e3) / 1e12})
                    except RuntimeError as err:
                        results.append({"rows": rows, "experts": e, "layer": what, "variant": name,
                                        "note": str(err)[:160]})
    for r in results:
        rate = f"{r['tflops']:8.1f} TFLOP/s  {r['ms']:.3f} ms" if "tflops" in r else r["note"]
        print(f"rows {r['rows']:>6}  E {r['experts']:>2}  {r['layer']}  {r['variant']:<26} {rate}")
    write_json(args.json, {"benchmark": "gmm", "dtype": str(dtype), "device": str(device), "rows": results})


# ------------------------------------------------------------------------------------------------------ summary

def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def summarize(out: Path, results: list[dict] | None = None) -> str:
    """The numbers to look at, from the JSON files under `out`."""
    lines = []
    bf16 = _load(out / "moe_layer_bf16.json")
    if bf16:
        lines.append(f"MoE layer fwd+bwd on {bf16['device_name']} (torch {bf16['torch']}), {bf16['config']['dtype']} "
                     "parameters; vs dense = useful TFLOP/s / dense MLP's (target >= 0.85)")
        peak = bf16.get("matmul_peak")
        dense = {r["k"]: r for r in bf16["rows"] if r["impl"] == "dense"}
        if peak:
            shares = ", ".join(f"k={k}: {_fmt(r.get('useful_tflops'), '.4g')} TFLOP/s = "
                               f"{_fmt(r.get('useful_tflops', 0) / peak['tflops'], '.1%')}"
                               for k, r in sorted(dense.items()))
            lines.append(f"  peak {peak['size']}^3 matmul {peak['tflops']:.4g} TFLOP/s; dense MLP {shares}")
        lines.append(f"  {'E':>3} {'k':>2} {'cf':>5} {'dropped':>8} {'index':>7} {'grouped':>8} {'einsum':>7}"
                     f"  {'soft':>6}")
        by = {(r["impl"], r["experts"], r["k"], r["capacity_factor"]): r for r in bf16["rows"]}
        cases = sorted({(r["experts"], r["k"], r["capacity_factor"]) for r in bf16["rows"] if r["impl"] == "index"})
        for e, k, cf in cases:
            get = lambda impl, kk=k: by.get((impl, e, kk, cf), {}).get("vs_dense")  # noqa: E731
            dropped = by.get(("grouped", e, k, cf), {}).get("dropped")
            lines.append(f"  {e:>3} {k:>2} {cf:>5} {_fmt(dropped):>8} {_fmt(get('index')):>7} "
                         f"{_fmt(get('grouped')):>8} {_fmt(get('einsum')):>7}  {_fmt(get('soft', None)):>6}")
        ec = [r for r in bf16["rows"] if r["impl"].startswith("ec_") and r.get("vs_dense") is not None]
        if ec:
            lines.append("  expert choice, vs dense k=1: " + "; ".join(
                f"E{r['experts']} cf{r['capacity_factor']} {r['impl'][3:]} {r['vs_dense']:.3f}" for r in ec))
    peers = _load(out / "moe_layer_peers.json")
    if peers:
        lines.append("against the naive loop and the PyTorch MoE packages (same run's dense rows), vs dense:")
        skipped = sorted({r["note"] for r in peers["rows"] if r.get("note") and "ms" not in r})
        for e, k, cf in sorted({(r["experts"], r["k"], r["capacity_factor"]) for r in peers["rows"]
                                if r["impl"] not in ("dense", "loop") and "ms" in r},
                               key=lambda c: tuple(-1 if v is None else v for v in c)):
            cells = [f"{r['impl']} {_fmt(r.get('vs_dense'))}" for r in peers["rows"]
                     if (r["experts"], r["k"]) == (e, k) and r["capacity_factor"] in (cf, None) and "ms" in r
                     and r["impl"] != "dense"]
            lines.append(f"  E{e} k{'-' if k is None else k} cf{cf}: " + ", ".join(cells))
        lines += [f"  skipped: {note}" for note in skipped]
    for name, title in (("moe_layer_autocast.json", "autocast (fp32 params)"),
                        ("moe_layer_groups.json", "8-image groups"),
                        ("moe_layer_compiled.json", "torch.compile (dense compiled too)")):
        data = _load(out / name)
        if not data:
            continue
        rows = [r for r in data["rows"] if r["impl"] in ("index", "grouped") and r.get("vs_dense") is not None]
        cells = [f"E{r['experts']} k{r['k']} cf{r['capacity_factor']} {r['impl']} {r['vs_dense']:.3f}" for r in rows]
        lines.append(f"{title}, vs dense: " + "; ".join(cells))
    kernels = _load(out / "gmm.json")
    if kernels:
        lines.append("expert matmuls alone, TFLOP/s (" + kernels["dtype"] + "):")
        by_case = {}
        for r in kernels["rows"]:
            by_case.setdefault((r["rows"], r["experts"], r["layer"]), []).append(
                f"{r['variant']} {_fmt(r.get('tflops'), '.0f')}")
        for (rows, e, layer), cells in by_case.items():
            lines.append(f"  rows {rows} E {e} {layer}: " + ", ".join(cells))
    train = _load(out / "train_step.json")
    if train:
        config = train["config"]
        lines.append(f"train step ({config['dtype']}, AdamW, batch {config['batch_size']}): " + "; ".join(
            f"{r['model']} {_fmt(r.get('images_per_s'), '.1f')} img/s"
            + (f" (time ratio {r['speed_ratio']:.3f})" if r.get("speed_ratio") else "") for r in train["rows"]))
    if results:
        lines.append("steps: " + ", ".join(f"{r['step']} {r['status']} ({r['seconds']:.0f} s)" for r in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["profile"]:
        profile(argv[1:])
        return 0
    if argv[:1] == ["gmm"]:
        gmm(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(BENCH / "results" / "device_check"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, in-process")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for all steps together: a step gets min(its limit, what is left); steps that "
                             "would get under 15 s are skipped (default 480, so one device call stays under 10 min)")
    parser.add_argument("--only", nargs="+",
                        help="run only these steps: tests layer peers train autocast groups gmm profile compile")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"),
                        help="wheels of the peer packages for the peers step (benchmarks/fetch_peer_wheels.sh)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.monotonic()
    with open(out / "device_check.log", "a") as log:
        for name, limit, step_argv in steps(out, args.cpu_smoke):
            if args.only and name not in args.only:
                continue
            left = args.budget - (time.monotonic() - start)
            if left < 15:
                results.append({"step": name, "status": "skipped (budget spent)", "seconds": 0.0})
                continue
            site = peer_site(Path(args.wheels), log) if name == "peers" and not args.cpu_smoke else None
            results.append(run_step(name, int(min(limit, left)), step_argv, log, args.cpu_smoke, site))
        text = summarize(out, results)
        if (out / "moe_layer_bf16.json").is_file():  # the draft of docs/benchmarks.md, targets checked
            sys.path.insert(0, str(BENCH))
            try:
                from report import report

                (out / "benchmarks.md").write_text(report(out))
                text += f"\ntargets and tables: {out / 'benchmarks.md'} (copy it to docs/benchmarks.md)"
            except Exception as err:  # noqa: BLE001 - the measurements are written; the summary must still print
                text += f"\nreport.py failed: {type(err).__name__}: {err}"
        log.write("\n===== summary\n" + text + "\n")
    print("\n===== summary\n" + text, flush=True)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
