#!/usr/bin/env bash
# ONE command on the GPU machine (see docs/performance.md and docs/gpu.md), from the
# checkout root, after scripts/prepare_gpu_run.sh filled .gpu/ here:
#
#   bash scripts/gpu_bench.sh          (device run: carry [".gpu"])
#   STEPS="tests" bash scripts/gpu_bench.sh      only some steps (tests kernels e2e torch)
#
# Installs the Vulkan loader from .gpu/*.deb, then: nvidia-smi and the adapter list, the
# kernel tests on the GPU (unchecked kernels, as in release), the kernel benchmarks (full
# sizes), the end-to-end steps, and the PyTorch references (bench/torch/step_reference.py
# and scripts/sdpa_reference.py) in the same session (the machines
# drift: compare only figures from one run). Everything goes to $OUT (default ./gpu-out);
# a short summary is printed at the end.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
G=$PWD/.gpu
STEPS=${STEPS:-"tests kernels e2e torch"}
# The device tool ends a command after 600 s: the whole script keeps within BUDGET, and
# each step's limit is cut so that the steps after it keep their share (the same-session
# PyTorch reference, last, is never the one left without time).
# The default leaves a session (15 minutes of device time, start-up included) room for a
# second call: the H100 run of 2026-11-23 took 28 s of kernels, 10 s end to end and 30 s of
# PyTorch.
BUDGET=${BUDGET:-450}
TEST_BUDGET=${TEST_BUDGET:-100}   # seconds for all test binaries together
KERNELS_LIMIT=${KERNELS_LIMIT:-130} E2E_LIMIT=${E2E_LIMIT:-90} TORCH_LIMIT=${TORCH_LIMIT:-100}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
# seconds the steps after NAME ask for (those in STEPS)
after() {
    local r=0
    case $1 in
        tests) has kernels && r=$((r + KERNELS_LIMIT)); ;&
        kernels) has e2e && r=$((r + E2E_LIMIT)); ;&
        e2e) has torch && r=$((r + TORCH_LIMIT)); ;;
    esac
    echo $r
}
# seconds step NAME may take: its own limit, cut to what the budget leaves after the later steps
allowed() {
    local left=$((BUDGET - SECONDS - $(after "$1")))
    [ "$left" -lt "$2" ] && echo "$left" || echo "$2"
}
source "$(dirname "$0")/gpu_env.sh" || exit 2
EQ="$G/equimodal"
# the tests that start the CLI find it here (the path cargo built it at is not on this machine)
export EQUIMODAL_BIN="$EQ"
SUM="$OUT/summary.txt"
: >"$SUM"

# step NAME TIMEOUT_S CMD...: run with a time limit (cut by the budget), output to
# $OUT/NAME.txt, status to the summary
step() {
    local name=$1 limit
    limit=$(allowed "$1" "$2"); shift 2
    if [ "$limit" -lt 20 ]; then echo "[$name] skipped: the budget is spent ($SECONDS of $BUDGET s)" | tee -a "$SUM"; return 0; fi
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - t0)) s: $*" | tee -a "$SUM"
    return 0
}

{ nvidia-smi; echo; "$EQ" devices; } >"$OUT/env.txt" 2>&1
echo "[env] $(grep -m1 -o 'NVIDIA [A-Z0-9 ]*[A-Z0-9]' "$OUT/env.txt" || echo 'no NVIDIA adapter in nvidia-smi')" | tee -a "$SUM"

# correctness first: the kernel test suites, unchecked kernels on the real device
if has tests && [ -f "$G/tests.tar.gz" ]; then
    mkdir -p /tmp/eqtests && tar -C /tmp/eqtests -xzf "$G/tests.tar.gz"
    : >"$OUT/tests.txt"
    t0=$SECONDS
    TEST_BUDGET=$(allowed tests "$TEST_BUDGET")
    # first what only this machine can run: the tensor-core (cooperative-matrix) kernels
    # against their references (lavapipe runs them emulated), then every target in the order
    # prepare_gpu_run.sh lists them
    for spec in "ops coop tensor_cores" "nn cooperative_matrix" "ops" "gpu" "nn" "layers" "optim" "bench"; do
        set -- $spec
        t=/tmp/eqtests/tests/$1
        shift
        [ -x "$t" ] || continue
        # each binary gets at most TEST_TIMEOUT, and never more than the test budget has left
        lim=$((TEST_BUDGET - (SECONDS - t0)))
        [ "$lim" -gt "${TEST_TIMEOUT:-60}" ] && lim=${TEST_TIMEOUT:-60}
        if [ "$lim" -lt 10 ]; then echo "[test $spec] skipped (test budget spent)" | tee -a "$SUM"; continue; fi
        echo "== $spec" >>"$OUT/tests.txt"
        timeout "$lim" "$t" --test-threads=1 "$@" >>"$OUT/tests.txt" 2>&1
        echo "[test $spec] exit $? ($(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$OUT/tests.txt" | tail -1))" | tee -a "$SUM"
    done
fi

# one tuning cache for every step (the kernel rows, the end-to-end steps); the choices are
# printed after the kernel rows ($OUT returns at most 8 files, so no file of its own)
export EQUIMODAL_TUNE_CACHE=/tmp/equimodal-tune.json
has kernels && step kernels "$KERNELS_LIMIT" bash -c \
    '"$1" bench --json "$2"; echo; "$1" tune --quick; echo; "$1" tune --list' _ "$EQ" "$OUT/kernels.json"
# end to end, then where the AUG step's GPU time goes (one pass per kernel launch, by grid)
has e2e && step e2e "$E2E_LIMIT" bash -c \
    '"$1" bench --e2e --json "$2"; echo; EQUIMODAL_PROFILE=2 "$1" bench --e2e --filter aug_step --steps 5' _ "$EQ" "$OUT/e2e.json"
# both PyTorch references into torch.txt ($OUT returns at most 8 files)
has torch && step torch "$TORCH_LIMIT" env PYTHONUNBUFFERED=1 bash -c \
    'python3 "$1/bench/torch/step_reference.py"; echo; python3 "$1/scripts/sdpa_reference.py"' _ "$(cd "$(dirname "$0")/.." && pwd)"

{
    has kernels && { echo; echo "==== kernels (GPU timestamps) ===="; cat "$OUT/kernels.txt"; }
    has e2e && { echo; echo "==== end-to-end (wall clock), then the AUG step's profile ===="; head -n 60 "$OUT/e2e.txt"; }
    has torch && { echo; echo "==== PyTorch references, same session ===="; tail -n 50 "$OUT/torch.txt"; }
} >>"$SUM"
cat "$SUM"
