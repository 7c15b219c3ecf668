#!/usr/bin/env bash
# One-call GPU validation of actnn_mm, for a machine with a GPU, python3 and its own torch (and
# nothing else of ours): builds the CUDA extension in place for that GPU, runs the cuda-marked
# tests (tools/gpu_check_tests.txt), the kernel benchmark (>= 256 MB), the dispatch-overhead
# benchmark (tools/bench_overhead.py: ops, host reads, L2/L3 throughput vs exact) and the ResNet-50
# memory/speed benchmark (batch 128 + the largest-batch search, time-bounded), then prints a
# table of every step and every target (measured value, PASS/MISS) last.
#
#   bash tools/fetch_gpu_wheels.sh                    # first, on a machine with network: .whl/
#   bash tools/gpu_check.sh [WHEELS_DIR]              # on the GPU machine (default .whl/)
#   GPU_CHECK_ALLOW_CPU=1 bash tools/gpu_check.sh     # dry run on CPU: same steps, small sizes,
#                                                     # CUDA-only parts skipped
#
# Results (logs, bench JSON + PNG, summary.txt/json) go to $OUT when set, else
# work_dirs/gpu_check/. Exit status: non-zero when any step failed (the table is printed
# anyway); missed targets fail it only with GPU_CHECK_STRICT=1.
#
# Environment: PYTHON (python3), GPU_CHECK_BUDGET (seconds for everything: 470 on GPU, 1500 in
# CPU mode), GPU_CHECK_BUILD (1/0: build the extension; default 1 on GPU, 0 in CPU mode, where 1
# builds a CPU-only copy into a temporary folder and leaves the checkout alone), GPU_CHECK_SEARCH_GB
# (memory cap of the largest-batch search, 16), GPU_CHECK_SEARCH_TIME (seconds per searched
# method, 60), GPU_CHECK_METHODS (benchmarked methods, default all), GPU_CHECK_SEARCH_METHODS
# ("exact L3").
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
WHEELS="${1:-${GPU_CHECK_WHEELS:-.whl}}"
CPU_MODE="${GPU_CHECK_ALLOW_CPU:-0}"
RES="${OUT:-$ROOT/work_dirs/gpu_check}"
BUDGET="${GPU_CHECK_BUDGET:-$([[ "$CPU_MODE" == 1 ]] && echo 1500 || echo 470)}"
SEARCH_GB="${GPU_CHECK_SEARCH_GB:-16}"
SEARCH_TIME="${GPU_CHECK_SEARCH_TIME:-60}"
SEARCH_METHODS="${GPU_CHECK_SEARCH_METHODS:-exact L3}"
METHODS="${GPU_CHECK_METHODS:-}"
mkdir -p "$RES"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
T0=$SECONDS
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

left() { echo $(( BUDGET - (SECONDS - T0) )); }

record() {  # record NAME STATUS SECONDS NOTE
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >> "$STEPS"
}

skip_step() {  # skip_step NAME REASON
  echo "== $1: skipped ($2)"
  record "$1" skipped 0 "$2"
}

# run_step NAME LIMIT LOG QUIET CMD...: run CMD with a time limit (capped by what is left of
# the budget), output to LOG (and the terminal unless QUIET=1; quiet steps show their tail on
# failure). Records ok / FAIL (rc N) / TIMEOUT; returns the command's status.
run_step() {
  local name=$1 limit=$2 log=$3 quiet=$4
  shift 4
  local budget_left
  budget_left=$(left)
  (( limit > budget_left )) && limit=$budget_left
  if (( limit < 10 )); then
    echo "== $name: not run, the ${BUDGET} s budget is spent"
    record "$name" TIMEOUT 0 "not run: the ${BUDGET} s budget is spent"
    return 124
  fi
  echo "== $name (limit ${limit} s): $*"
  local t=$SECONDS rc
  if [[ "$quiet" == 1 ]]; then
    timeout --kill-after=15 "$limit" "$@" > "$log" 2>&1
    rc=$?
  else
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  local dt=$(( SECONDS - t ))
  if (( rc == 0 )); then
    record "$name" ok "$dt" ""
  elif (( rc == 124 || rc == 137 )); then
    record "$name" TIMEOUT "$dt" "killed after ${limit} s"
  else
    record "$name" FAIL "$dt" "exit $rc; see $(basename "$log")"
  fi
  if (( rc != 0 )) && [[ "$quiet" == 1 ]]; then
    echo "-- $name failed (exit $rc), last lines of $log:"
    tail -n 40 "$log"
  fi
  return $rc
}

summary() {
  echo
  echo "================================ gpu_check summary ================================"
  local bench="$RES/bench_resnet50_${DEVTYPE:-cuda}.json"
  local strict=()
  [[ "${GPU_CHECK_STRICT:-0}" == 1 ]] && strict=(--strict)
  "$PY" tools/gpu_check_summary.py --steps "$STEPS" --bench "$bench" \
    --kernels "$RES/kernels.log" --tests-log "$RES/tests.log" --out "$RES" "${strict[@]}"
  SUMMARY_RC=$?
  if (( SUMMARY_RC != 0 && SUMMARY_RC != 3 )); then
    echo "(summary script failed with exit $SUMMARY_RC; raw step table:)"
    column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
    SUMMARY_RC=1
  fi
}

finish() {
  SUMMARY_RC=0
  echo "results in $RES (total $(( SECONDS - T0 )) s)"
  summary
  local failed
  failed=$(awk -F'\t' '$2 != "ok" && $2 != "skipped"' "$STEPS" | cut -f1 | tr '\n' ' ')
  rm -rf "$WORK"
  if [[ -n "$failed" ]]; then
    echo "gpu_check: FAILED: $failed" >&2
    exit 1
  fi
  (( SUMMARY_RC != 0 )) && exit "$SUMMARY_RC"
  exit 0
}

# -- 1. environment -------------------------------------------------------------------------------
ENV_PY='
import platform, sys, torch
gpu = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if gpu:
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB")
else:
    print("no CUDA GPU visible")
    sys.exit(3)
'
DEVTYPE=cuda
run_step env 60 "$WORK/env.log" 0 "$PY" -c "$ENV_PY"
ENV_RC=$?
if (( ENV_RC == 3 )); then
  if [[ "$CPU_MODE" == 1 ]]; then
    DEVTYPE=cpu
    sed -i '$d' "$STEPS"
    record env ok 0 "CPU mode (GPU_CHECK_ALLOW_CPU=1): no GPU, small sizes, CUDA-only parts skipped"
  else
    sed -i '$d' "$STEPS"
    record env FAIL 0 "no CUDA GPU visible (GPU_CHECK_ALLOW_CPU=1 runs the CPU dry run)"
    finish
  fi
elif (( ENV_RC != 0 )); then
  finish  # no python/torch: nothing else can run
fi

# -- 2. dependencies (pure-Python wheels carried in WHEELS_DIR; the GPU machine has no network) ---
NEEDED="mmengine addict termcolor yapf pytest hypothesis torchvision matplotlib numpy"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  run_step wheels 120 "$WORK/wheels.log" 1 "$PY" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
else
  skip_step wheels "no wheels in $WHEELS (bash tools/fetch_gpu_wheels.sh makes them)"
fi
DEPS_PY="
import importlib.util, sys
missing = [m for m in '$NEEDED'.split() if importlib.util.find_spec(m) is None]
if missing:
    print('missing python packages:', ' '.join(missing))
    print('fetch them on a machine with network: bash tools/fetch_gpu_wheels.sh, carry .whl/')
    sys.exit(1)
import actnn_mm
print('imports ok; actnn_mm from', actnn_mm.__file__)
"
run_step deps 120 "$WORK/deps.log" 0 "$PY" -c "$DEPS_PY" || finish

# -- 3. build the extension in place -------------------------------------------------------------
BUILD="${GPU_CHECK_BUILD:-$([[ $DEVTYPE == cuda ]] && echo 1 || echo 0)}"
JOBS="$(nproc 2>/dev/null || echo 4)"
if [[ "$BUILD" == 1 && "$DEVTYPE" == cuda ]]; then
  ARCH="$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")')"
  run_step build 300 "$RES/build.log" 1 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
    MAX_JOBS="$JOBS" "$PY" setup.py build_ext --inplace
elif [[ "$BUILD" == 1 ]]; then
  run_step build 900 "$RES/build.log" 1 env ACTNN_MM_NO_CUDA=1 MAX_JOBS="$JOBS" "$PY" setup.py \
    build_ext --build-lib "$WORK/build_lib" --build-temp "$WORK/build_tmp"
else
  skip_step build "CPU mode: the checkout's built extension is used (GPU_CHECK_BUILD=1 builds a copy)"
fi
EXT_PY="
import sys, torch
import actnn_mm._C as C
print('actnn_mm._C:', C.__file__, '| CUDA kernels:', C.with_cuda())
if '$DEVTYPE' == 'cuda':
    if not C.with_cuda():
        sys.exit('the extension has no CUDA kernels')
    import warnings
    from actnn_mm.engine import compress, decompress
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        x = torch.randn(64, 4096, device='cuda')
        y = decompress(compress(x, 2))
        torch.cuda.synchronize()
    slow = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if slow:
        sys.exit('the compiled CUDA kernels were not used: ' + ' | '.join(slow))
    assert y.shape == x.shape and torch.isfinite(y).all(), 'CUDA round trip failed'
    print('CUDA compress/decompress round trip ok (compiled kernels)')
"
run_step extension 120 "$WORK/extension.log" 0 "$PY" -c "$EXT_PY" || finish

# -- 4. cuda-marked tests ------------------------------------------------------------------------
TEST_PATHS=()
MISSING_PATHS=()
while read -r p; do
  [[ -z "$p" || "$p" == \#* ]] && continue
  if [[ -e "$p" ]]; then TEST_PATHS+=("$p"); else MISSING_PATHS+=("$p"); fi
done < tools/gpu_check_tests.txt
if (( ${#MISSING_PATHS[@]} )); then
  echo "gpu_check: test paths not found (skipped): ${MISSING_PATHS[*]}"
fi
run_step tests 180 "$RES/tests.log" 0 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider \
  "${TEST_PATHS[@]}"

# -- 5. kernel benchmark -------------------------------------------------------------------------
if [[ "$DEVTYPE" == cuda ]]; then
  KARGS=(--device cuda --sizes-mb 256 1024 --dtypes fp32 bf16 --bits 2 4 --iters 10)
else
  KARGS=(--device cpu --sizes-mb 2 --dtypes fp32 --bits 2 --iters 2)
fi
run_step kernels 90 "$RES/kernels.log" 0 "$PY" tools/bench_kernels.py "${KARGS[@]}"

# -- 5b. dispatch overhead: ops and host reads per training step, throughput vs exact -------------
if [[ "$DEVTYPE" == cuda ]]; then
  OARGS=(resnet50 --device cuda --batch 128 --image-size 224 --levels exact L2 L3 --warmup 2
         --count-steps 1 --steps 5)
else
  OARGS=(resnet50 --device cpu --batch 2 --image-size 64 --levels exact L3 --warmup 1
         --count-steps 1 --steps 1)
fi
# Its figures are in the JSON; its log stays in $WORK (at most 8 result files come back), and
# is appended to kernels.log so that a failure's output is kept.
run_step overhead 120 "$WORK/overhead.log" 0 "$PY" tools/bench_overhead.py "${OARGS[@]}" \
  --out "$RES/overhead_resnet50_${DEVTYPE}.json"
{ echo "=== tools/bench_overhead.py"; cat "$WORK/overhead.log"; } >> "$RES/kernels.log"

# -- 6. ResNet-50 memory / speed benchmark -------------------------------------------------------
if [[ "$DEVTYPE" == cuda ]]; then
  BARGS=(--device cuda --batch 128 --iters 10 --warmup 3 --max-batch-search 16384
         --search-memory-gb "$SEARCH_GB" --search-tolerance 0.1)
else
  # 64x64, batch 4 (smaller leaves BatchNorm too few values per channel for 2-bit noise).
  # Emulated 0.33 GiB cap: ResNet-50's state (weights, grads, momentum) is 0.286 GiB, so exact
  # (6.75 MB/sample) runs out near batch 7 and L3 (0.6 MB/sample) reaches the cap of 16.
  BARGS=(--device cpu --batch 4 --image-size 64 --iters 1 --warmup 1 --max-batch-search 16
         --search-memory-gb 0.33 --search-tolerance 0.5 --search-iters 0)
  METHODS="${METHODS:-exact ckpt L2 L3 exact-bf16 L3-bf16}"
  SEARCH_TIME="${GPU_CHECK_SEARCH_TIME:-120}"
fi
# The search gets what the budget leaves after the runs at batch 128 (about 150 s on an H100).
read -r -a SM <<< "$SEARCH_METHODS"
MAX_SEARCH=$(( ($(left) - 180) / ${#SM[@]} ))
(( MAX_SEARCH < SEARCH_TIME )) && SEARCH_TIME=$MAX_SEARCH
(( SEARCH_TIME < 20 )) && SEARCH_TIME=20
[[ -n "$METHODS" ]] && BARGS+=(--methods $METHODS)
run_step bench 420 "$RES/bench.log" 0 "$PY" tools/bench_memory.py --model resnet50 "${BARGS[@]}" \
  --search-methods "${SM[@]}" --time-limit "$SEARCH_TIME" --out "$RES"

finish
