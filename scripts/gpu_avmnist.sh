#!/usr/bin/env bash
# AV-MNIST reference protocol (configs/avmnist_*.toml: CNN encoders, 25 epochs, as in
# shared/bench/avmnist_reference.py) for every method and several seeds, in parallel on one
# GPU machine. Run from the checkout root after `WITH_DATA=1 scripts/prepare_gpu_run.sh`
# filled .gpu/ and .gpu-data/ here:
#
#   bash scripts/gpu_avmnist.sh          (device run: carry [".gpu", ".gpu-data"])
#
# Environment: SEEDS (default "0 1 2"), METHODS (default: every avmnist preset),
# EXTRA (more runs, one per line: "name|preset|key=value key=value", each run once per seed),
# JOBS (runs at a time, default 8), DEADLINE (seconds for all runs together, default 480;
# runs still going then are stopped and reported with the epochs they finished).
# Into $OUT: avmnist_summary.txt (every run's final accuracies and the per-method seed
# means) and avmnist_runs.tar.gz (the run directories without checkpoints, for
# `equimodal report`).
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
G=$ROOT/.gpu
source "$(dirname "$0")/gpu_env.sh" || exit 2
EQ="$G/equimodal"
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS-"unimodal_audio unimodal_image joint ogm_ge aug aim"}
JOBS=${JOBS:-8}
DEADLINE=${DEADLINE:-480}
RUNS=/tmp/eqruns
rm -rf "$RUNS"; mkdir -p "$RUNS"

if [ -z "${EQUIMODAL_DATA:-}" ]; then
    [ -f "$ROOT/.gpu-data/avmnist.tar.xz" ] || { echo "no .gpu-data/avmnist.tar.xz: run WITH_DATA=1 scripts/prepare_gpu_run.sh and carry .gpu-data" >&2; exit 2; }
    mkdir -p /tmp/eqdata && tar -C /tmp/eqdata -xJf "$ROOT/.gpu-data/avmnist.tar.xz" || exit 2
    export EQUIMODAL_DATA=/tmp/eqdata
fi

# the job list: "name|preset|sets" lines
list=$RUNS/jobs.txt
: >"$list"
for s in $SEEDS; do
    for m in $METHODS; do echo "${m}_s$s|avmnist_$m|seed=$s" >>"$list"; done
    if [ -n "${EXTRA:-}" ]; then
        while IFS='|' read -r name preset sets; do
            [ -n "$name" ] && echo "${name}_s$s|$preset|seed=$s $sets" >>"$list"
        done <<<"$EXTRA"
    fi
done
echo "$(wc -l <"$list") runs, $JOBS at a time, deadline ${DEADLINE} s"

T0=$(date +%s)
export EQ RUNS T0 DEADLINE ROOT
one() {
    IFS='|' read -r name preset sets <<<"$1"
    local left=$((DEADLINE - ($(date +%s) - T0)))
    [ "$left" -gt 5 ] || { echo "[$name] not started (deadline)"; return 0; }
    local args=()
    for kv in $sets; do args+=(--set "$kv"); done
    local t=$(date +%s)
    timeout "$left" "$EQ" train --config "$ROOT/configs/$preset.toml" --out "$RUNS/$name" --quiet "${args[@]}" \
        >"$RUNS/$name.log" 2>&1
    local rc=$?
    echo "$rc $(( $(date +%s) - t ))" >"$RUNS/$name.status"
    echo "[$name] exit $rc after $(( $(date +%s) - t )) s"
}
export -f one
xargs -a "$list" -d '\n' -P "$JOBS" -I{} bash -c 'one "$@"' _ {}

python3 - "$RUNS" >"$OUT/avmnist_summary.txt" <<'PY'
import json, os, re, statistics, sys
runs = sys.argv[1]
rows, groups = [], {}
for line in open(os.path.join(runs, "jobs.txt")):
    name = line.split("|")[0]
    path = os.path.join(runs, name, "metrics.jsonl")
    st = open(os.path.join(runs, name + ".status")).read().split() if os.path.exists(os.path.join(runs, name + ".status")) else ["-", "-"]
    ms = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    if not ms:
        rows.append(f"{name:28s} exit {st[0]:>3s}  no epochs   " + (open(os.path.join(runs, name + '.log')).read()[-300:].replace('\n', ' ') if os.path.exists(os.path.join(runs, name + '.log')) else ''))
        continue
    t = ms[-1]["test"]
    views = {k: 100 * v["acc"] for k, v in t.get("per_modality", {}).items()}
    # the test accuracy of this protocol swings by tens of points from epoch to epoch (in the
    # PyTorch reference too): the mean over the last 5 epochs is the steadier figure
    last5 = statistics.mean(100 * m["test"]["acc"] for m in ms[-5:])
    extra = ""
    if "aug" in ms[-1]:
        extra = " learners " + json.dumps(ms[-1]["aug"].get("learners", ""))
    rows.append(f"{name:28s} exit {st[0]:>3s} {st[1]:>5s} s  epochs {len(ms):2d}  fused {100*t['acc']:5.1f}  last5 {last5:5.1f}  "
                + "  ".join(f"{k} {v:5.1f}" for k, v in views.items()) + extra)
    base = re.sub(r"_s\d+$", "", name)
    groups.setdefault(base, []).append((100 * t["acc"], views, len(ms), last5))
print("\n".join(rows))
print("\nseed means (final epoch; ± sample std over seeds)")
for base, rs in groups.items():
    f = [r[0] for r in rs]
    sd = statistics.stdev(f) if len(f) > 1 else 0.0
    vs = {}
    for r in rs:
        for k, v in r[1].items():
            vs.setdefault(k, []).append(v)
    l5 = [r[3] for r in rs]
    print(f"{base:24s} n={len(f)} epochs {min(r[2] for r in rs):2d}  fused {statistics.mean(f):5.1f} ± {sd:4.1f}  "
          + f"last5 {statistics.mean(l5):5.1f} ± {statistics.stdev(l5) if len(l5) > 1 else 0.0:4.1f}  "
          + "  ".join(f"{k} {statistics.mean(v):5.1f}" for k, v in vs.items()))
PY
tar -C "$RUNS" --exclude=checkpoints -czf "$OUT/avmnist_runs.tar.gz" .
echo "all runs done after $(( $(date +%s) - T0 )) s"
cat "$OUT/avmnist_summary.txt"
