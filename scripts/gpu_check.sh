#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): on a machine with an NVIDIA GPU, after
#   bash scripts/setup.sh --gpu
# run   bash scripts/gpu_check.sh   (about 8 min) and paste the last line into docs/results.md with the date and card.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
  echo "note: nvidia-smi not found: the GPU parts will say they were skipped" >&2
fi
.venv/bin/python -c "import faiss; assert hasattr(faiss, 'GpuIndexBinaryFlat'), 'faiss has no GPU support: run bash scripts/setup.sh --gpu'" \
  || echo "note: faiss without GPU support here (bash scripts/setup.sh --gpu installs it)" >&2
exec timeout 900 .venv/bin/python benchmarks/gpu_check.py "$@"
