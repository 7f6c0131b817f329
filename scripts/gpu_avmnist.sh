#!/usr/bin/env bash
# AV-MNIST reference protocol on one GPU machine: sweeps/avmnist_reference.toml (every
# avmnist preset x seeds, JOBS runs at once), then `equimodal compare` twice: the mean of
# the last five epochs (the sweep's rule) and the last epoch. Run from the checkout root
# after `WITH_DATA=1 scripts/prepare_gpu_run.sh` filled .gpu/ and .gpu-data/ here:
#
#   bash scripts/gpu_avmnist.sh          (device run: carry [".gpu", ".gpu-data"])
#
# Environment: BUDGET (seconds this call may take, default 570: the device tool ends a
# command after 600), JOBS (runs at a time, default the sweep's 8), SWEEP (another sweep
# file; its runs go to /tmp/eqruns/<its name>), and TORCH_SEEDS (e.g. 0,1: the PyTorch script
# bench/torch/avmnist_protocol.py on the engine's own clip-image pairs of the presets'
# setting, img25, with those training seeds, within TORCH_LIMIT seconds, default 240; pair
# it with SWEEP=sweeps/avmnist_reference_torch.toml, whose runs start from PyTorch's
# initialisation as the script's do). The sweep gets what the budget leaves after the
# PyTorch step and the comparisons (DEADLINE overrides); it is stopped then, and a second
# call resumes it (a sweep skips finished runs and resumes interrupted ones). The PyTorch
# step runs in the call whose sweep finished; TORCH_ONLY=1 runs it (and the pairs) alone.
# Into $OUT (the device returns at most 8 files): compare.md (last 5 epochs),
# compare_last.md, compare_best_val.md (where the runs have a validation split),
# <sweep name>.runs.tar.gz (the run directories without checkpoints), <sweep
# name>.compare.tar.gz (each comparison's CSV/LaTeX tables and charts), and with TORCH_SEEDS
# torch_avmnist.txt and the pairs.csv it trained on: 7 files.
# Across sessions (the machine and its /tmp are gone after a call): put the returned
# <sweep name>.runs.tar.gz into .gpu-data/ before the next session's call; the script
# unpacks it first, and the sweep skips the runs that finished (a run that had not finished
# starts over).
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
G=$ROOT/.gpu
source "$(dirname "$0")/gpu_env.sh" || exit 2
EQ="$G/equimodal"
SWEEP=${SWEEP:-$ROOT/sweeps/avmnist_reference.toml}
BUDGET=${BUDGET:-570}
TORCH_LIMIT=${TORCH_LIMIT:-240}
# the comparisons and the archive take well under a minute
DEADLINE=${DEADLINE:-$((BUDGET - 60 - ${TORCH_SEEDS:+TORCH_LIMIT+}0))}
# one runs folder per sweep file: a folder belongs to the sweep that made it
NAME=$(basename "$SWEEP" .toml)
RUNS=/tmp/eqruns/$NAME
CMP=/tmp/eqcompare/$NAME
ARCHIVE=$NAME.runs.tar.gz
if [ -f "$ROOT/.gpu-data/$ARCHIVE" ] && [ ! -d "$RUNS" ]; then
    mkdir -p "$RUNS" && tar -C "$RUNS" -xzf "$ROOT/.gpu-data/$ARCHIVE" \
        && echo "resumed from .gpu-data/$ARCHIVE: $(ls "$RUNS"/*/summary.txt 2>/dev/null | wc -l) runs finished before"
fi

if [ -z "${EQUIMODAL_DATA:-}" ]; then
    [ -f "$ROOT/.gpu-data/avmnist.tar.xz" ] || { echo "no .gpu-data/avmnist.tar.xz: run WITH_DATA=1 scripts/prepare_gpu_run.sh and carry .gpu-data" >&2; exit 2; }
    mkdir -p /tmp/eqdata && tar -C /tmp/eqdata -xJf "$ROOT/.gpu-data/avmnist.tar.xz" || exit 2
    export EQUIMODAL_DATA=/tmp/eqdata
fi

sweep_rc=0
if [ -z "${TORCH_ONLY:-}" ]; then
    "$EQ" sweep "$SWEEP" --dry-run | tail -1
    timeout "$DEADLINE" "$EQ" sweep "$SWEEP" --out "$RUNS" --quiet ${JOBS:+--parallel "$JOBS"}
    sweep_rc=$?
    echo "sweep exit $sweep_rc after $SECONDS s (124: stopped at the deadline; call again to resume)"
    # each comparison into its own folder, its Markdown table to $OUT, the rest into the archive
    rm -rf "$CMP" && mkdir -p "$CMP"
    "$EQ" compare "$RUNS" --select last_k --k 5 --out "$CMP/last5" && cp "$CMP/last5/compare.md" "$OUT/compare.md"
    "$EQ" compare "$RUNS" --select last --out "$CMP/last" >/dev/null && cp "$CMP/last/compare.md" "$OUT/compare_last.md"
    # best on validation, where the sweep's runs have a validation split (avmnist_reference_torch)
    "$EQ" compare "$RUNS" --select best_val --out "$CMP/best_val" >/dev/null 2>&1 && cp "$CMP/best_val/compare.md" "$OUT/compare_best_val.md"
    tar -C "$RUNS" --exclude=checkpoints -czf "$OUT/$ARCHIVE" .
    tar -C "$CMP" -czf "$OUT/$NAME.compare.tar.gz" .
fi
limit=$((BUDGET - SECONDS - 10))
[ "$limit" -gt "$TORCH_LIMIT" ] && limit=$TORCH_LIMIT
if [ -n "${TORCH_SEEDS:-}" ] && [ "$sweep_rc" -ne 0 ]; then
    echo "PyTorch step not run: the sweep has not finished (call again; or TORCH_ONLY=1 for the PyTorch step alone)"
elif [ -n "${TORCH_SEEDS:-}" ] && [ "$limit" -lt 60 ]; then
    echo "PyTorch step not run: $limit s of the budget left (call again with TORCH_ONLY=1)"
elif [ -n "${TORCH_SEEDS:-}" ]; then
    # the pairing of the sweep's data settings: the preset's, with the first run's --set values
    set -- $("$EQ" sweep "$SWEEP" --dry-run | head -n 1)
    shift 2 # its index and name
    sets=()
    for s in "$@"; do sets+=(--set "$s"); done
    "$EQ" data pairs --config "$ROOT/configs/avmnist_joint.toml" "${sets[@]}" --out "$OUT/pairs.csv" --force
    timeout "$limit" env PYTHONUNBUFFERED=1 python3 "$ROOT/bench/torch/avmnist_protocol.py" \
        --pairs "$OUT/pairs.csv" --settings img25 --seeds "$TORCH_SEEDS" >"$OUT/torch_avmnist.txt" 2>&1
    echo "PyTorch protocol exit $? (124: stopped at TORCH_LIMIT); last lines:"
    tail -n 12 "$OUT/torch_avmnist.txt"
fi
