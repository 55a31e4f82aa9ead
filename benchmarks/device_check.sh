#!/usr/bin/env bash
# The GPU check of the MoE fast path in one call (about 6 minutes on an H100 / H200), see benchmarks/README.md:
#     bash benchmarks/device_check.sh                 # results under $OUT, else benchmarks/results/device_check
#     bash benchmarks/device_check.sh --only layer    # some steps: tests layer peers train autocast groups gmm profile
#     bash benchmarks/device_check.sh --cpu-smoke     # tiny shapes on the CPU (what tests/test_benchmarks.py runs)
# Exits 2 at once when torch sees no CUDA device (unless --cpu-smoke); 1 when a step failed; 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg

smoke=0
for arg in "$@"; do [[ "$arg" == "--cpu-smoke" ]] && smoke=1; done
if [[ $smoke == 0 ]]; then
    if ! reason=$("$PY" -c '
import torch
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
print(f"{torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()}), torch {torch.__version__}")
' 2>&1); then
        echo "device_check.sh: ${reason##*$'\n'}" >&2
        echo "device_check.sh: run it on a machine with a CUDA GPU, or pass --cpu-smoke for the tiny CPU version" >&2
        exit 2
    fi
    echo "device_check.sh: $reason"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
        --format=csv,noheader
fi
out="${OUT:-benchmarks/results/device_check}"
exec "$PY" benchmarks/device_check.py --out "$out" "$@"
