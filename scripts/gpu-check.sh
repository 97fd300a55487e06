#!/usr/bin/env bash
# GPU check (issue 11, item 9): the A100 profiles' vLLM flags on this machine's NVIDIA
# GPU(s), with the SmolLM2 models `python -m engines prepare` builds (small: AWQ W4A16
# through vLLM's GPU Marlin kernel, large: bf16); then the real-engine conformance tests
# through a gateway and a throughput comparison, gateway vs engine directly.
# Results: bench/results/gpu-check/gpu-check.{md,json} (and the engines' logs).
#
#   bash scripts/gpu-check.sh [--seconds 20 --concurrency 32 --max-tokens 128 ...]
#
# Needs: an NVIDIA GPU with its driver, Python 3.11, network for the first run (PyPI:
# the CUDA build of vLLM 0.32.0 goes to its own venv). VLLM_PYTHON=/path/to/python uses
# an existing vLLM 0.32 install instead. It has not been run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null || {
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi -L failed)" >&2; exit 2; }

[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
CACHE="${TOLLGATE_CACHE:-$HOME/.cache/tollgate}"
VLLM_PYTHON="${VLLM_PYTHON:-$CACHE/engine-venv/vllm-cuda-0.32.0/bin/python}"
if ! "$VLLM_PYTHON" -c 'import vllm, sys; sys.exit(vllm.__version__ != "0.32.0")' 2>/dev/null; then
  echo "gpu-check: installing vLLM 0.32.0 (CUDA) into $(dirname "$(dirname "$VLLM_PYTHON")")"
  "${PYTHON:-python3.11}" -m venv "$(dirname "$(dirname "$VLLM_PYTHON")")"
  "$VLLM_PYTHON" -m pip install --quiet --upgrade pip
  "$VLLM_PYTHON" -m pip install --quiet "vllm==0.32.0"
fi

# engines.gpucheck prepares (cached) SmolLM2 bf16 and AWQ W4A16 itself: `engines prepare`
# would choose the small tier's quantization by this host's CPU (W4A8 without AVX-512).
exec .venv/bin/python -m engines.gpucheck --vllm-python "$VLLM_PYTHON" "$@"
