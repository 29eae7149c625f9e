#!/usr/bin/env bash
# GPU smoke test (benchmarks/gpu_smoke.py): a ~1.5B-parameter random-weight LLaVA-family
# VLM, 20 bf16 SFT steps, then a served-evaluation batch through `transformers serve`.
# Prints tokens/s, MFU and served prompts/s; writes benchmarks/results/gpu_smoke.json.
# Needs a CUDA GPU and the project installed with a CUDA torch + torchvision (GPU machines
# install them normally). Under 8 minutes on one H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout "${GPU_SMOKE_TIMEOUT:-900}" "$PY" benchmarks/gpu_smoke.py "$@"
