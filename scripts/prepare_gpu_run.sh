#!/usr/bin/env bash
# Run HERE (the development machine) before the GPU run: builds the release binary and the
# kernel test binaries, and puts into .gpu/ (ignored by git, carried to the GPU machine)
# everything scripts/gpu_bench.sh needs there that the checkout does not hold: the binary,
# the Vulkan loader debs (Debian's, fetched with apt-get download) and the test binaries.
# The PyTorch scripts (bench/torch/) travel with the checkout.
#
#   scripts/prepare_gpu_run.sh
#   then, on the device machine (carry .gpu):  bash scripts/gpu_bench.sh
#
#   WITH_DATA=1 scripts/prepare_gpu_run.sh
#   also packs the AV-MNIST files of the data root (FSDD + MNIST, xz, ~13 MiB; the data root is
#   $EQUIMODAL_DATA, else the per-user directory: `equimodal data fetch avmnist` fills it)
#   into .gpu-data/ for scripts/gpu_avmnist.sh (carry .gpu and .gpu-data)
#
#   VULKAN_DEBS=/some/dir scripts/prepare_gpu_run.sh
#   takes the loader packages from that folder instead of apt-get download
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# the test targets whose tests run on the GPU (unchecked kernels, as in release builds): the
# kernels (ops: every family, the tensor-core ones included), the engine (gpu), the layers
# and models (nn, layers), the optimizers and the bench cases; ops first, so a short device
# budget still runs the kernels nothing but a GPU with cooperative matrices can run
TESTS=${GPU_TESTS:-"ops gpu nn layers optim bench"}

# the Vulkan loader and the GL/EGL/GLX libraries it pulls in: unpacking libvulkan1 alone
# left wgpu without a backend on the GPU machine
DEBS="libvulkan1 libglvnd0 libgl1 libglx0 libegl1 libgles2 libopengl0"
if [ -z "${VULKAN_DEBS:-}" ]; then
    VULKAN_DEBS=$(mktemp -d)
    (cd "$VULKAN_DEBS" && apt-get download $DEBS) || {
        echo "apt-get download $DEBS failed (run apt-get update first, or set VULKAN_DEBS=dir)" >&2; exit 1; }
fi
ls "$VULKAN_DEBS"/*.deb >/dev/null || { echo "no .deb files in $VULKAN_DEBS" >&2; exit 1; }

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
cp "$VULKAN_DEBS"/*.deb .gpu/
for e in "${exes[@]}"; do
    n=$(basename "$e"); cp "$e" ".gpu/tests/${n%-*}"   # strip cargo's hash suffix
done
strip .gpu/equimodal .gpu/tests/* 2>/dev/null || true
# the carried tree is limited to 64 MiB: pack the tests
tar -C .gpu -czf .gpu/tests.tar.gz tests && rm -rf .gpu/tests

if [ "${WITH_DATA:-0}" = 1 ]; then
    DATA=${EQUIMODAL_DATA:-}
    if [ -z "$DATA" ]; then
        case "${XDG_DATA_HOME:-}" in /*) DATA=$XDG_DATA_HOME/equimodal ;; *) DATA=$HOME/.local/share/equimodal ;; esac
    fi
    for d in fsdd/recordings mnist; do
        [ -d "$DATA/$d" ] || { echo "missing $DATA/$d: run \`equimodal data fetch avmnist\` (or set EQUIMODAL_DATA)" >&2; exit 1; }
    done
    rm -rf .gpu-data && mkdir -p .gpu-data
    tar -C "$DATA" -cJf .gpu-data/avmnist.tar.xz fsdd/recordings mnist
fi

EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
for d in /.gpu/ /.gpu-data/; do grep -qxF "$d" "$EXCLUDE" 2>/dev/null || echo "$d" >>"$EXCLUDE"; done

size=$(du -smc .gpu .gpu-data 2>/dev/null | tail -1 | cut -f1)
echo "prepared .gpu/ $( [ -d .gpu-data ] && echo "and .gpu-data/ ")(${size} MiB): $(ls .gpu .gpu-data 2>/dev/null | tr '\n' ' ')"
[ "$size" -lt 60 ] || echo "warning: .gpu/ is ${size} MiB; the device run carries at most 64 MiB in all (drop tests via GPU_TESTS=...)" >&2
echo "next: on the device machine, carry .gpu and run: bash scripts/gpu_bench.sh"
