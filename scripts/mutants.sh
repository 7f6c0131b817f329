#!/usr/bin/env bash
# Mutation testing of the files whose bugs the tests must catch (issue "Tests that would
# catch the bugs they claim to"): each file with the test binaries that cover it.
#   cargo install cargo-mutants --locked      # once
#   scripts/mutants.sh [FILE...]              # default: every scoped file below
# Runs in a scratch copy of the working tree (git worktree at HEAD, target/ copied so builds
# are incremental), one mutant at a time, release profile, lavapipe; results per file under
# mutants.out/<file>/ (caught.txt, missed.txt, timeout.txt, unviable.txt). Slow: a build and
# the listed tests per mutant (about a minute each on 2 cores), so scope it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# cargo test arguments per file: the layer's test binaries (tests/<layer>/), narrowed by a
# name filter where one layer's binary holds much more than the file needs.
declare -A tests=(
  [src/methods/ogm_ge.rs]="--test methods --test train"
  [src/methods/aug.rs]="--test methods --test train"
  [src/methods/aim.rs]="--test methods --test ops"
  [src/methods/joint.rs]="--test methods"
  [src/ops/boost.rs]="--test ops -- boost::"
  [src/optim/sgd.rs]="--test optim"
  [src/optim/adam.rs]="--test optim"
  [src/optim/clip.rs]="--test optim"
  [src/train/checkpoint.rs]="--test train"
)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${!tests[@]}")
scratch=${MUTANTS_SCRATCH:-/tmp/equimodal-mutants}
if [ ! -d "$scratch" ]; then
  git -C "$root" worktree add --detach "$scratch" HEAD >/dev/null
  [ -d "$root/target" ] && cp -a "$root/target" "$scratch/"
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan} EQUIMODAL_ADAPTER=${EQUIMODAL_ADAPTER:-llvmpipe}
for f in "${files[@]}"; do
  t=${tests[$f]:-}
  [ -n "$t" ] || { echo "no test list for $f (add it to scripts/mutants.sh)" >&2; exit 2; }
  out="$root/mutants.out/${f//\//_}"
  mkdir -p "$out"
  # shellcheck disable=SC2086
  (cd "$scratch" && cargo mutants --in-place --profile release --file "$f" --output "$out" -- $t) || true
  echo "$f: $(wc -l <"$out/mutants.out/caught.txt") caught, $(wc -l <"$out/mutants.out/missed.txt") missed, $(wc -l <"$out/mutants.out/timeout.txt") timeouts"
done
