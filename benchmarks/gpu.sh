#!/usr/bin/env bash
# GPU benchmarks of the trainer core on one NVIDIA GPU. Run on a machine with hpcft's training stack installed:
#   bash benchmarks/gpu.sh            the 8B-shaped benchmark (benchmarks/bench_gpu8b.py): LoRA r16 and QLoRA at
#                                     sequence 2048 with packing, each with training.kernels=none and =liger, full
#                                     fine-tuning of a 1B shape under ZeRO-2 and ZeRO-3, a bare transformers+peft loop;
#                                     tokens/s, MFU, peak memory beside hpcft's estimate (under 10 minutes on an H100/H200)
#   bash benchmarks/gpu.sh --small    the ~0.5B benchmark and the time-limit warning on the GPU (benchmarks/bench_gpu.py)
#   python benchmarks/bench_gpu8b.py --smoke   the 8B script's code with tiny shapes on the CPU
# A machine without network: put the missing wheels in .whl/ first, e.g. on a machine with network
#   pip download --no-deps -d .whl liger-kernel==0.8.5 bitsandbytes deepspeed omegaconf hydra-core
# (liger-kernel is pure Python; its Triton comes with CUDA builds of torch. flash-attn has no wheel: not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
"$PY" -c "import liger_kernel" 2>/dev/null && echo "liger-kernel: installed" || echo "liger-kernel: NOT installed (the liger cases will be refused)"
if [[ "${1:-}" == "--small" ]]; then
  shift
  exec timeout 480 "$PY" benchmarks/bench_gpu.py "$@"
fi
exec timeout 590 "$PY" benchmarks/bench_gpu8b.py "$@"
