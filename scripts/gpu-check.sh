#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): real-size SD 1.5, SDXL and FLUX.1 training steps on one
# GPU — bf16/fp16, 8-bit AdamW, quantised base, gradient checkpointing, peak VRAM vs the memory plan.
#   scripts/gpu-check.sh [--only sd15,sdxl,flux]   on a CUDA machine (< 8 min on one H100)
#   scripts/gpu-check.sh --dry-run                 anywhere: everything that needs no CUDA
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_check.py "$@"
