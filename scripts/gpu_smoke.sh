#!/usr/bin/env bash
# GPU smoke test: a few hundred steps of resnet32x4 -> resnet8x4 KD in bf16-mixed on random
# CIFAR-shaped data; prints the GPU name and images/s, and exits 0 with a message when there is no GPU.
# Usage: scripts/gpu_smoke.sh [--steps 300] [--batch-size 64] [--precision bf16-mixed]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
exec "$PYTHON" scripts/gpu_smoke.py "$@"
