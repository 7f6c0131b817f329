#!/usr/bin/env bash
# Run HERE (the development machine) before the GPU run: builds the release binary and the
# kernel test binaries, and puts into .gpu/ (ignored by git, carried to the GPU machine)
# everything scripts/gpu_bench.sh needs there: the binary, the Vulkan loader debs, the
# PyTorch reference script and the tests. Only the checkout travels; ../shared does not.
#
#   scripts/prepare_gpu_run.sh
#   then, on the device machine (carry .gpu):  bash scripts/gpu_bench.sh
#
#   WITH_DATA=1 scripts/prepare_gpu_run.sh
#   also packs the AV-MNIST sources (FSDD + MNIST, xz, ~13 MiB) into .gpu-data/ for
#   scripts/gpu_avmnist.sh (carry .gpu and .gpu-data)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
SHARED=${SHARED:-$(cd .. && pwd)/shared}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# kernel families whose tests run on the GPU (unchecked kernels, as in release builds)
TESTS=${GPU_TESTS:-"elementwise matmul conv attention softmax norm pool shape optim boost bench"}

for f in "$SHARED/gpu/vulkan-debs" "$SHARED/bench/torch_reference.py"; do
    [ -e "$f" ] || { echo "missing $f (set SHARED=/path/to/shared)" >&2; exit 1; }
done

cargo build --release --bins
args=()
for t in $TESTS; do args+=(--test "$t"); done
# test executables: cargo prints their paths in its JSON messages
cargo test --release --no-run "${args[@]}" --message-format=json >/tmp/equimodal-gpu-tests.json
mapfile -t exes < <(python3 - /tmp/equimodal-gpu-tests.json <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m.get("target", {}).get("kind", []):
        print(m["executable"])
PY
)

rm -rf .gpu
mkdir -p .gpu/tests
cp "$TARGET/release/equimodal" .gpu/
cp "$SHARED"/gpu/vulkan-debs/*.deb .gpu/
cp "$SHARED/bench/torch_reference.py" .gpu/
for e in "${exes[@]}"; do
    n=$(basename "$e"); cp "$e" ".gpu/tests/${n%-*}"   # strip cargo's hash suffix
done
strip .gpu/equimodal .gpu/tests/* 2>/dev/null || true
# the carried tree is limited to 64 MiB: pack the tests
tar -C .gpu -czf .gpu/tests.tar.gz tests && rm -rf .gpu/tests

if [ "${WITH_DATA:-0}" = 1 ]; then
    for d in fsdd mnist; do [ -d "$SHARED/data/$d" ] || { echo "missing $SHARED/data/$d" >&2; exit 1; }; done
    rm -rf .gpu-data && mkdir -p .gpu-data
    tar -C "$SHARED/data" -cJf .gpu-data/avmnist.tar.xz fsdd mnist
fi

EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
for d in /.gpu/ /.gpu-data/; do grep -qxF "$d" "$EXCLUDE" 2>/dev/null || echo "$d" >>"$EXCLUDE"; done

size=$(du -smc .gpu .gpu-data 2>/dev/null | tail -1 | cut -f1)
echo "prepared .gpu/ $( [ -d .gpu-data ] && echo "and .gpu-data/ ")(${size} MiB): $(ls .gpu .gpu-data 2>/dev/null | tr '\n' ' ')"
[ "$size" -lt 60 ] || echo "warning: .gpu/ is ${size} MiB; the device run carries at most 64 MiB in all (drop tests via GPU_TESTS=...)" >&2
echo "next: on the device machine, carry .gpu and run: bash scripts/gpu_bench.sh"
