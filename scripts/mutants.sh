#!/usr/bin/env bash
# Mutation testing of the files whose bugs the tests must catch (issue 18): each scoped file
# with the tests that exercise it. Results and the command's cost: docs/testing.md.
#   cargo install cargo-mutants --locked      # once
#   nice -n 5 scripts/mutants.sh [FILE...]    # default: every scoped file, in the order below
#   MUTANTS_ARGS="--re 'coefficients'" scripts/mutants.sh src/methods/ogm_ge.rs   # some mutants
#   MUTANTS_ARGS="--iterate" ...              # only the mutants not caught last time
#   MUTANTS_TESTS="methods | aim::aim_config" ...   # another "binaries | filters" than the file's
# Two passes save hours on a slow file: a first run with a narrow, fast filter, then
# MUTANTS_ARGS="--iterate" with the file's own list re-tests only what the first missed (a
# mutant a subset of the tests caught, the whole list catches too).
# Runs in a scratch copy of the working tree (a detached git worktree at HEAD,
# $MUTANTS_SCRATCH, target/ copied so builds are incremental; after new commits move it with
# `git -C $MUTANTS_SCRATCH checkout --detach <commit>`), one mutant at a time, release
# profile, lavapipe; results per file under mutants.out/<file>/mutants.out/ (caught.txt,
# missed.txt, timeout.txt, unviable.txt, outcomes.json). Cost: an incremental release build
# of the library and the listed test binaries per mutant (about 2 minutes on 2 shared
# cores) plus the filtered tests, so each file gets the narrowest test filter that still
# runs every test that exercises it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Per file: "test binaries | name filters". Only the listed binaries are built per mutant
# (passed to every cargo invocation with -C, so the build step does not relink all dozen
# test binaries); the filters keep every test that reaches the file (a filter applies to
# every listed binary; a test runs if its path contains any of them; none: all tests of
# the binaries). Order: smallest and most important first.
order=(
  src/methods/ogm_ge.rs src/methods/joint.rs src/ops/boost.rs src/optim/clip.rs
  src/train/checkpoint.rs src/optim/sgd.rs src/optim/adam.rs src/methods/aug.rs src/methods/aim.rs
)
declare -A tests=(
  # OGM's mechanisms (coefficients, scope, epochs, noise), every method's step, training
  # and the exact resume of GE's noise stream (joint: the model every method builds on)
  [src/methods/ogm_ge.rs]="methods train | ogm every_method"
  [src/methods/joint.rs]="methods train | ogm every_method"
  [src/methods/aug.rs]="methods train | aug every_method"
  [src/methods/aim.rs]="methods train | aim every_method"
  [src/ops/boost.rs]="ops | boost::"
  [src/optim/sgd.rs]="optim |"
  [src/optim/adam.rs]="optim |"
  [src/optim/clip.rs]="optim |"
  [src/train/checkpoint.rs]="train | checkpoint:: killed_during a_corrupt_checkpoint a_failed_checkpoint_write a_full_disk resume_after_a_kill_aug"
)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("${order[@]}")
scratch=${MUTANTS_SCRATCH:-/tmp/equimodal-mutants}
if [ ! -d "$scratch" ]; then
  git -C "$root" worktree add --detach "$scratch" HEAD >/dev/null
  [ -d "$root/target/release" ] && mkdir -p "$scratch/target" && cp -a "$root/target/release" "$scratch/target/"
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan} EQUIMODAL_ADAPTER=${EQUIMODAL_ADAPTER:-llvmpipe} XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
for f in "${files[@]}"; do
  t=${MUTANTS_TESTS:-${tests[$f]:-}}
  [ -n "$t" ] || { echo "no test list for $f (add it to scripts/mutants.sh)" >&2; exit 2; }
  bins=() && for b in ${t%%|*}; do bins+=(-C "--test=$b"); done
  filters=${t#*|}
  out="$root/mutants.out/${f//\//_}"
  mkdir -p "$out"
  # a hung mutant (an endless loop) is cut after --timeout seconds of tests
  # shellcheck disable=SC2086
  (cd "$scratch" && eval cargo mutants --in-place --profile release --file "$f" --output "$out" \
    --timeout "${MUTANTS_TIMEOUT:-300}" "${bins[@]}" ${MUTANTS_ARGS:-} -- -- $filters) || true
  o="$out/mutants.out"
  echo "$f: $(wc -l <"$o/caught.txt") caught, $(wc -l <"$o/missed.txt") missed, $(wc -l <"$o/timeout.txt") timeouts, $(wc -l <"$o/unviable.txt") unviable"
done
