#!/usr/bin/env bash
# GPU benchmark of the trainer core (LoRA, QLoRA, full under ZeRO-2 on a ~0.5B random-init model) and the
# time-limit warning on the GPU. Run on any machine with an NVIDIA GPU and hpcft's training stack installed:
#   bash benchmarks/gpu.sh            (prints its table to stdout; a few minutes)
# A machine without network: put the missing wheels (bitsandbytes, deepspeed, omegaconf, hydra-core, ...) in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec timeout 480 "$PY" benchmarks/bench_gpu.py "$@"
