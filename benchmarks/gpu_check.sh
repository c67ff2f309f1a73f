#!/usr/bin/env bash
# One prepared run of the Triton priority_mask kernel on a CUDA GPU (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh               # on a machine with a CUDA GPU: results under $GPU_CHECK_OUT (default out/gpu_check)
#   bash benchmarks/gpu_check.sh --dry-run     # without a GPU: interpreter, tiny sizes, host timers
#
# Installs nothing. If dllm_masks (with its dllm_masks.triton_kernels subpackage) is not importable,
# as on a bare GPU machine, the package is assembled in a temporary folder and put on PYTHONPATH;
# python -P keeps the repository root, whose dllm_masks/ lacks triton_kernels/, off sys.path.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -P -c "import dllm_masks.triton_kernels" >/dev/null 2>&1; then
    site=$(mktemp -d)
    cp -r dllm_masks "$site/dllm_masks"
    rm -rf "$site/dllm_masks/triton_kernels"
    cp -r triton_kernels "$site/dllm_masks/triton_kernels"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check.sh: dllm_masks assembled in $site (not installed)"
fi
export DLLM_MASKS_SKIP_CPP=1 PYTHONUNBUFFERED=1
exec "$PY" -P benchmarks/gpu_check.py --out "${GPU_CHECK_OUT:-out/gpu_check}" "$@"
