#!/usr/bin/env bash
# Download the PyTorch MoE packages that benchmarks/moe_layer.py compares against (pure-Python wheels, no torch)
# into .whl/ at the repository root, for a GPU machine that cannot reach PyPI. device_check.sh installs whatever
# .whl/ holds into a temporary folder for its `peers` step only; with the device tool: carry=[".whl"].
#     bash benchmarks/fetch_peer_wheels.sh            # needs PyPI; about 2 MB
# Versions are pinned so that two runs compare the same code; the dependencies are listed by hand because
# `pip download` with dependencies would also fetch a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -m pip download --no-deps --only-binary=:all: -d .whl \
    soft-moe-pytorch==0.1.9 mixture-of-experts==0.2.3 st-moe-pytorch==0.1.8 \
    einops==0.8.2 beartype==0.23.1 colt5-attention==0.11.2 local-attention==1.11.2 hyper-connections==0.4.11 \
    torch-einops-utils==0.2.0
ls -1 .whl
