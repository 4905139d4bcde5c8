#!/usr/bin/env bash
# One prepared run for a lent GPU machine (no network; torch already installed there).
# Builds the extension in place, runs the CUDA tests and the GPU benchmarks, writes logs
# under $OUT (when set) and prints a short table last. Usage:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# Build only for the card present (faster than the default list).
cc=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cc}
export ONEPRUNE_CUDA=1
t0=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m oneprune_ext info | tee "$OUT/info.txt"

tests="skipped (pytest not installed)"
if $PY -c "import pytest" 2>/dev/null; then
  if $PY -m pytest python_tests/test_ops.py -q -k "cuda" -p no:cacheprovider >"$OUT/cuda_tests.log" 2>&1; then
    tests="passed"
  else
    tests="FAILED"; status=1
  fi
  tests="$tests: $(tail -1 "$OUT/cuda_tests.log")"
fi

$PY benchmarks/gpu_kernels.py --json "$OUT/gpu_kernels.json" >"$OUT/gpu_kernels.md" 2>"$OUT/gpu_kernels.err" || status=1

echo
echo "== oneprune_ext GPU check =="
echo "CUDA op tests: $tests"
cat "$OUT/gpu_kernels.md"
[ -s "$OUT/gpu_kernels.err" ] && { echo "stderr:"; tail -5 "$OUT/gpu_kernels.err"; }
exit $status
