"""Smoke tests of the benchmark scripts in their tiny CPU mode (one repeat): every row runs, the JSON is written,
and the FLOP counts follow the formulas in the scripts' docstrings, recomputed here by hand."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_moe_layer_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "moe_layer.json"
    payload = _load("moe_layer").main(["--device", "cpu", "--tokens", "512", "--dim", "64", "--hidden", "128",
                                       "--experts", "4", "--k", "2", "--capacity-factor", "1.25", "--dtype", "fp32",
                                       "--repeats", "1", "--warmup", "0", "--peak-size", "64", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(payload["rows"], default=str))
    rows = {r["impl"]: r for r in payload["rows"]}
    impls = ("dense", "index", "grouped", "einsum", "loop", "soft", "ec_index", "ec_grouped")
    assert set(impls) <= set(rows)
    for impl in impls:
        assert rows[impl]["ms"] > 0 and rows[impl]["useful_tflops"] > 0, impl
    for impl in ("index", "grouped", "einsum"):  # against the dense row with the same k
        assert rows[impl]["vs_dense"] == rows[impl]["useful_tflops"] / rows["dense"]["useful_tflops"], impl
    assert "vs_dense" not in rows["soft"]  # Soft MoE is compared with dense k=1, not run here
    # grouped computes kept rows only: useful FLOPs times the measured fraction of choices kept.
    grouped = rows["grouped"]
    assert 0 <= grouped["dropped"] < 1
    assert grouped["executed_flops"] == round(grouped["useful_flops"] * (1 - grouped["dropped"]))
    peak = payload["matmul_peak"]
    assert peak["size"] == 64 and peak["tflops"] == 2 * 64**3 / (peak["ms"] / 1e3) / 1e12
    # 512 tokens = 4 images x 128 (the largest divisor of 512 below 196), one image per routing group.
    t, d, h, k, e, s = 512, 64, 128, 2, 4, 128
    assert rows["dense"]["useful_flops"] == 12 * t * k * d * h == rows["index"]["useful_flops"]
    capacity = 80  # ceil(128 * 2 * 1.25 / 4) = 80, already a multiple of 4
    assert rows["index"]["capacity"] == capacity
    assert rows["index"]["executed_flops"] == 12 * (t // s) * e * capacity * d * h
    ec_capacity = 40  # ceil(128 * 1.25 / 4) = 40, a multiple of 4: every slot computes a token
    for impl in ("ec_index", "ec_grouped"):
        assert rows[impl]["capacity"] == ec_capacity
        assert rows[impl]["useful_flops"] == 12 * (t // s) * e * ec_capacity * d * h == rows[impl]["executed_flops"]
        assert "vs_dense" not in rows[impl]  # compared with dense k=1, not run here
    slots = 40  # round(128 * 1.25 / 4)
    assert rows["soft"]["capacity"] == slots and rows["soft"]["useful_flops"] == 12 * (t // s) * e * slots * d * h
    for r in payload["rows"]:  # peers: timed when installed, else a reason
        assert "ms" in r or r.get("note"), r
    assert payload["torch"] == torch.__version__ and payload["date"]
    assert payload["command"].startswith("python benchmarks/moe_layer.py --device cpu --tokens 512")
    assert "useful TFLOP/s" in capsys.readouterr().out


def test_train_step_tiny_cpu(tmp_path):
    out = tmp_path / "train_step.json"
    payload = _load("train_step").main(["--device", "cpu", "--pairs", "test", "--batch-size", "4", "--dtype", "fp32",
                                        "--repeats", "1", "--warmup", "0", "--json", str(out)])
    dense, moe = payload["rows"]
    assert json.loads(out.read_text())["benchmark"] == "train_step"
    assert (dense["kind"], moe["kind"]) == ("dense", "moe")
    assert dense["images_per_s"] > 0 and moe["images_per_s"] > 0
    assert moe["params_m"] > dense["params_m"]  # the experts
    assert moe["flop_ratio"] == moe["gflops"] / dense["gflops"] > 1.0


def test_memory_table_matches_hand_count():
    rows = _load("memory_table").table([8], [1, 8, 16], "every-2")
    b16 = next(r for r in rows if r["model"] == "V-MoE-B/16")
    # 6 MoE blocks (every 2nd of 12) x 8 experts x (768x3072 + 3072 + 3072x768 + 768) parameters.
    expert = 6 * 8 * (2 * 768 * 3072 + 3072 + 768)
    assert round(b16["expert_params_m"] * 1e6) == expert
    shared = b16["params_m"] * 1e6 - expert
    assert b16["ep_w1"] == 1 and b16["ep_w8"] == 8 and b16["ep_w16"] == 8  # P = gcd(W, E)
    assert abs(b16["gib_w1"] - 16 * (shared + expert) / 2**30) < 1e-9
    assert abs(b16["gib_w8"] - 16 * (shared + expert / 8) / 2**30) < 1e-9


def test_device_check_fails_fast_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": ""}
    proc = subprocess.run(["bash", str(BENCHMARKS / "device_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "sees no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert proc.stdout == ""  # nothing ran


def test_device_check_cpu_smoke(tmp_path, capsys):
    rc = _load("device_check").main(["--cpu-smoke", "--out", str(tmp_path)])
    assert rc == 0
    for name in ("moe_layer_bf16.json", "moe_layer_peers.json", "moe_layer_autocast.json", "moe_layer_groups.json",
                 "moe_layer_compiled.json", "train_step.json", "profile.txt", "device_check.log"):
        assert (tmp_path / name).stat().st_size > 0, name
    layer = json.loads((tmp_path / "moe_layer_bf16.json").read_text())
    assert {r["impl"] for r in layer["rows"]} == {"dense", "index", "grouped", "einsum", "soft", "ec_index",
                                                  "ec_grouped"}
    compiled = json.loads((tmp_path / "moe_layer_compiled.json").read_text())
    assert compiled["config"]["compile"] and {r["impl"] for r in compiled["rows"] if "ms" in r} == {"dense", "grouped"}
    peers = json.loads((tmp_path / "moe_layer_peers.json").read_text())
    assert {"dense", "grouped", "loop"} <= {r["impl"] for r in peers["rows"] if "ms" in r}
    assert {"mixture-of-experts", "st-moe-pytorch", "soft-moe-pytorch"} <= {r["impl"] for r in peers["rows"]}
    train = json.loads((tmp_path / "train_step.json").read_text())
    assert [r["dispatcher"] for r in train["rows"]] == [None, "index", "grouped"]
    assert "aten::_grouped_mm" in (tmp_path / "profile.txt").read_text()
    summary = capsys.readouterr().out.split("===== summary")[-1]
    assert "grouped" in summary and "steps: layer ok (0 s), peers ok (0 s), train ok" in summary
    assert "against the naive loop and the PyTorch MoE packages" in summary and "loop " in summary


def test_device_check_peer_site_installs_wheels_for_one_step(tmp_path):
    """The peers step imports packages from wheels installed into a temporary folder on its PYTHONPATH only."""
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name = "sparsevision_peer_probe"
    with zipfile.ZipFile(wheels / f"{name}-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{name}.py", "VALUE = 41 + 1\n")
        info = f"{name}-1.0.dist-info"
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    device_check = _load("device_check")
    with open(tmp_path / "log", "w") as log:
        assert device_check.peer_site(tmp_path / "empty", log) is None
        site = device_check.peer_site(wheels, log)
        assert site and (Path(site) / f"{name}.py").exists()
        probe = tmp_path / "probe.py"
        probe.write_text(f"import {name}\nassert {name}.VALUE == 42\n")
        assert device_check.run_step("probe", 60, [str(probe)], log, smoke=False, extra_path=site)["status"] == "ok"
        assert device_check.run_step("probe", 60, [str(probe)], log, smoke=False)["status"] == "exit 1"
