#!/usr/bin/env bash
# ONE command on the GPU machine (see docs/performance.md and shared/gpu/README.md), from the
# checkout root, after scripts/prepare_gpu_run.sh filled .gpu/ here:
#
#   bash scripts/gpu_bench.sh          (device run: carry [".gpu"])
#
# Installs the Vulkan loader from .gpu/*.deb, then: nvidia-smi and the adapter list, the
# kernel tests on the GPU (unchecked kernels, as in release), the kernel benchmarks (full
# sizes), the end-to-end steps, and the PyTorch reference in the same session (the machines
# drift: compare only figures from one run). Everything goes to $OUT (default ./gpu-out);
# a short summary is printed at the end.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
G=$PWD/.gpu
[ -x "$G/equimodal" ] || { echo "no $G/equimodal: run scripts/prepare_gpu_run.sh first and carry .gpu" >&2; exit 2; }

for f in "$G"/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
export EQUIMODAL_BACKEND=vulkan EQUIMODAL_CHECKED_KERNELS=0
EQ="$G/equimodal"
SUM="$OUT/summary.txt"
: >"$SUM"

# step NAME TIMEOUT_S CMD...: run with a time limit, output to $OUT/NAME.txt, status to the summary
step() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - t0)) s: $*" | tee -a "$SUM"
    return 0
}

{ nvidia-smi; echo; "$EQ" devices; } >"$OUT/env.txt" 2>&1
echo "[env] $(grep -m1 -o 'NVIDIA [A-Z0-9 ]*[A-Z0-9]' "$OUT/env.txt" || echo 'no NVIDIA adapter in nvidia-smi')" | tee -a "$SUM"

# correctness first: the kernel test suites, unchecked kernels on the real device
if [ -f "$G/tests.tar.gz" ]; then
    mkdir -p /tmp/eqtests && tar -C /tmp/eqtests -xzf "$G/tests.tar.gz"
    : >"$OUT/tests.txt"
    t0=$SECONDS
    for t in /tmp/eqtests/tests/*; do
        # the whole command must end inside the device's 10-minute limit: tests get ~100 s
        if [ $((SECONDS - t0)) -gt 100 ]; then echo "[test $(basename "$t")] skipped (test budget spent)" | tee -a "$SUM"; continue; fi
        echo "== $(basename "$t")" >>"$OUT/tests.txt"
        timeout 60 "$t" --test-threads=1 >>"$OUT/tests.txt" 2>&1
        echo "[test $(basename "$t")] exit $? ($(grep -o 'test result: [a-zA-Z]*\. [0-9]* passed; [0-9]* failed' "$OUT/tests.txt" | tail -1))" | tee -a "$SUM"
    done
fi

step kernels 200 "$EQ" bench --json "$OUT/kernels.json"
step e2e 120 "$EQ" bench --e2e --json "$OUT/e2e.json"
step torch 140 env PYTHONUNBUFFERED=1 python3 "$G/torch_reference.py"

{
    echo; echo "==== kernels (GPU timestamps) ===="; cat "$OUT/kernels.txt"
    echo; echo "==== end-to-end (wall clock) ===="; cat "$OUT/e2e.txt"
    echo; echo "==== PyTorch reference, same session ===="; tail -n 40 "$OUT/torch.txt"
} >>"$SUM"
cat "$SUM"
