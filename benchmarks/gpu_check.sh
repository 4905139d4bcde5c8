#!/usr/bin/env bash
# One prepared run on a GPU machine (no network needed; torch, pytest, torchvision there):
# proves the CUDA kernels and measures them. Steps, each logged under $OUT:
#   1. build in place (pip install --no-build-isolation -e ., the card's arch only)
#   2. the CUDA tests: CUDA kernels vs the CPU kernels on the same random layouts, fp32/fp16/bf16
#   3. compute-sanitizer memcheck, racecheck, synccheck over a small CUDA workload
#   4. CUDA-graph capture and replay of OneCyclePruner.before_step / after_step
#   5. grouped_norms bandwidth as a % of a torch copy of the same bytes
#   6. per-step bookkeeping of ResNet-56 (bs 128) and ResNet-50 (bs 64, bf16 autocast) as a % of
#      a plain training step (CUDA events), next to the published per-layer loop
#   7. host time per hook
#   8. prune time and memory freed (ResNet-50 to half of every group)
#   9. `oneprune profile` as a user runs it: ResNet-56 (bs 128) on the card, every phase and
#      regularizer next to the per-layer loop, host and device bookkeeping, a Chrome trace
# A short table is printed last. Exits non-zero if any step failed (a build error, a failing
# test, a sanitizer report, a mismatch, a crash); missed performance targets are reported in
# the table but are not failures. Meant to finish in under 8 minutes on an H100/H200.
#
# Usage:
#   bash benchmarks/gpu_check.sh                # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run  # anywhere: skips build, tests and sanitizers
#                                               # and runs steps 4-8 on the CPU, small sizes
# Environment: OUT (log folder, default: a new temp folder), PYTHON (default: python),
# TORCH_CUDA_ARCH_LIST (default: the visible card's), SANITIZER (compute-sanitizer path),
# BUDGET_S (whole-run time budget in seconds, default 480: each step gets at most what is left,
# and a step that cannot start in time is reported as not run, a failure). The sanitizers run
# last (they are the slowest); the table lists the steps in the order above.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STATUS=0
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"
T_START=$(date +%s)
BUDGET_S=${BUDGET_S:-480}

row() { echo "| $1 | $2 | $3 |" >>"$SUMMARY"; }
fail() { STATUS=1; row "$1" "$2" "FAILED"; }
last() { grep -v '^\s*$' "$OUT/$1.log" | tail -1 | cut -c1-160; }
# the first sanitizer report or error line of a log, else its last line that is not a clean summary
san_reason() {
  local r
  r=$(grep -E 'SUMMARY|Error|error' "$OUT/$1.log" | grep -v ' 0 errors' | head -1 | cut -c1-160)
  [ -n "$r" ] && echo "$r" || grep -v -e '^\s*$' -e ' 0 errors' "$OUT/$1.log" | tail -1 | cut -c1-160
}
# run NAME TIMEOUT CMD...: runs CMD with a time limit (at most what is left of the budget),
# output to $OUT/NAME.log; returns its status (125: not started, the budget is spent)
run() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T_START) ))
  if [ $left -lt 20 ]; then
    echo "[$name] not run: the ${BUDGET_S} s budget is spent" | tee "$OUT/$name.log"
    return 125
  fi
  [ $left -lt $limit ] && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$name] exit $rc after $(( $(date +%s) - t0 )) s (log: $OUT/$name.log)"
  [ $rc -eq 124 ] && echo "[$name] timed out after $limit s" >>"$OUT/$name.log"
  return $rc
}

echo "== oneprune_ext GPU check; logs in $OUT"
if [ $DRY -eq 0 ]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; then
    echo "no GPU visible (nvidia-smi failed); use --cpu-dry-run to check the script itself"
    exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  DEV=cuda
  QUICK=""
else
  echo "CPU dry run: no build, no CUDA tests, no sanitizers; steps 4-8 on the CPU with small sizes"
  echo "cpu dry run" >"$OUT/gpu.txt"
  DEV=cpu
  QUICK="--quick"
fi

# ---- 1. build ------------------------------------------------------------------------
if [ $DRY -eq 0 ]; then
  cc=$($PY -c "import torch; p=torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cc}
  export ONEPRUNE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  t0=$(date +%s)
  if run build 420 $PY -m pip install --no-build-isolation --no-deps -e .; then
    row "1. build (arch $TORCH_CUDA_ARCH_LIST)" "$(( $(date +%s) - t0 )) s" "ok"
  elif run build_inplace 420 $PY setup.py build_ext --inplace; then  # pip's editable install failed
    row "1. build (arch $TORCH_CUDA_ARCH_LIST)" "$(( $(date +%s) - t0 )) s (setup.py build_ext --inplace; pip -e failed, see build.log)" "ok"
  else
    fail "1. build" "see build.log and build_inplace.log"
    tail -40 "$OUT/build_inplace.log"
    echo "BUILD FAILED"; cat "$SUMMARY"; exit 1
  fi
  $PY -m oneprune_ext info | tee "$OUT/info.txt"
  if ! $PY -c "import oneprune_ext, sys; sys.exit(0 if oneprune_ext.build_info()['cuda_compiled'] else 1)"; then
    fail "1. build" "the extension has no CUDA kernels"
  fi
else
  row "1. build" "skipped (dry run: uses the existing build)" "-"
fi

# ---- 2. CUDA tests ---------------------------------------------------------------------
if [ $DRY -eq 0 ]; then
  if run cuda_tests 300 $PY -m pytest python_tests/test_cuda.py python_tests/test_ops.py -q -p no:cacheprovider \
        -k "cuda"; then
    if grep -q " passed" "$OUT/cuda_tests.log"; then
      row "2. CUDA tests (vs CPU kernels, fp32/fp16/bf16)" "$(tail -1 "$OUT/cuda_tests.log")" "ok"
    else
      fail "2. CUDA tests" "nothing ran (torch sees no GPU?): $(tail -1 "$OUT/cuda_tests.log")"
    fi
  else
    fail "2. CUDA tests" "$(tail -1 "$OUT/cuda_tests.log")"
  fi
else
  row "2. CUDA tests" "skipped (dry run)" "-"
fi

# ---- 4-8. graph, bandwidth, bookkeeping, hooks, prune ------------------------------------
step=4
for section in graph bandwidth bookkeeping hooks prune; do
  if run "$section" 300 $PY benchmarks/gpu_kernels.py "$section" --device "$DEV" $QUICK --json "$OUT/$section.json"; then
    grep '^|' "$OUT/$section.log" | sed "s/^| /| $step. /" >>"$SUMMARY"
  else
    grep '^|' "$OUT/$section.log" | sed "s/^| /| $step. /" >>"$SUMMARY"
    fail "$step. $section" "$(last "$section")"
  fi
  step=$((step + 1))
done

# ---- 9. oneprune profile (the user's command) ---------------------------------------------
if [ $DRY -eq 0 ]; then PROFILE_SIZE=(--batch 128 --steps 10); else PROFILE_SIZE=(--batch 16 --steps 2 --threads 1); fi
if run profile 240 $PY -m oneprune_ext.cli profile --model resnet56 "${PROFILE_SIZE[@]}" --device "$DEV" \
     --json "$OUT/profile.json" --trace "$OUT/profile_trace.json"; then
  # the numbers from its JSON; the trace must be Chrome trace JSON with the oneprune:: ranges
  if summary=$($PY - "$OUT/profile.json" "$OUT/profile_trace.json" 2>&1 <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
ph = {p["name"]: p for p in r["phases"]}
f, l = ph["sparsity/both"], ph["per_layer/both"]
names = {e.get("name") for e in json.load(open(sys.argv[2]))["traceEvents"]}
missing = [n for n in ("oneprune::before_step", "oneprune::search", "oneprune::prune") if n not in names]
assert not missing, f"trace lacks {missing}"
print(f"step {r['plain_step_ms']:.1f} ms; bookkeeping (both) fused {f['overhead_pct']:.3f} % "
      f"vs per-layer loop {l['overhead_pct']:.2f} %; search {r['search_ms']:.2f} ms; prune {r['prune_ms']:.1f} ms; trace ok")
PYEOF
  ); then
    row "9. oneprune profile resnet56 ($DEV, ${PROFILE_SIZE[*]})" "$summary" "ok"
  else
    fail "9. oneprune profile" "$(echo "$summary" | tail -1 | cut -c1-160)"
  fi
else
  fail "9. oneprune profile" "$(last profile)"
fi

# ---- 3. compute-sanitizer (run last: the slowest) ----------------------------------------------------------------
SAN=${SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)}
if [ $DRY -eq 1 ]; then
  row "3. compute-sanitizer" "skipped (dry run); workload checked on the CPU:" "-"
  if run sanitize_cpu 300 $PY benchmarks/gpu_kernels.py sanitize --device cpu --json "$OUT/sanitize_cpu.json"; then
    row "3. sanitizer workload on the CPU" "$(tail -1 "$OUT/sanitize_cpu.log" | cut -d'|' -f3)" "ok"
  else
    fail "3. sanitizer workload on the CPU" "$(last sanitize_cpu)"
  fi
elif [ -z "$SAN" ] || [ ! -x "$SAN" ]; then
  echo "compute-sanitizer not found: step 3 skipped"
  row "3. compute-sanitizer" "not installed: skipped" "SKIPPED"
else
  FILTER=()
  # only our kernels are instrumented (torch's own kernels run normally): much faster
  "$SAN" --help 2>&1 | grep -q -- "--kernel-name" && FILTER=(--kernel-name kns=oneprune)
  for tool in memcheck racecheck synccheck; do
    # no caching allocator: every allocation is exact, so an overrun is an error, not a neighbour
    if run "sanitizer_$tool" 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" --error-exitcode 3 \
         ${FILTER[@]+"${FILTER[@]}"} $PY benchmarks/gpu_kernels.py sanitize --device cuda; then
      row "3. compute-sanitizer $tool" "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" || echo 'no errors')" "ok"
    else
      fail "3. compute-sanitizer $tool" "$(san_reason "sanitizer_$tool")"
    fi
  done
fi

echo
echo "== oneprune_ext GPU check: $(cat "$OUT/gpu.txt"), $(( $(date +%s) - T_START )) s, logs in $OUT"
echo "| step | result | status |"
echo "| --- | --- | --- |"
sort -s -t'|' -k2,2n "$SUMMARY"  # by step number, in the order each step wrote its rows
if [ $STATUS -eq 0 ]; then echo "ALL STEPS PASSED"; else echo "SOME STEPS FAILED (see above)"; fi
exit $STATUS
