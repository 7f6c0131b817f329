#!/usr/bin/env bash
# AIM's auxiliary batch norm (method.aim.aux_bn) measured on the synthetic task with
# batch-normalised encoders (small CNNs; the MLP presets have no batch norm, so the option
# changes nothing there), next to joint training under the same settings. CPU-sized:
# ~2 minutes a run on lavapipe. Results: docs/aim.md#batch-norm-of-the-auxiliary-block.
# Usage: scripts/aux_bn_synthetic.sh [OUT_DIR] [SEEDS...]
set -euo pipefail
out=${1:-runs/aux_bn}
shift || true
seeds=("${@:-0 1 2}")
bin=${EQUIMODAL_BIN:-target/release/equimodal}
common=(--set model.encoder=small_cnn --set model.width=8 --set model.depth=2 --set train.lr=0.05 --set train.epochs=10 --quiet)
for seed in ${seeds[@]}; do
  for mode in main running own; do
    d="$out/aim-$mode-s$seed"
    [ -f "$d/summary.txt" ] || "$bin" train --config configs/synthetic_aim.toml "${common[@]}" --set seed=$seed --set method.aim.aux_bn=$mode --out "$d"
  done
  d="$out/joint-s$seed"
  [ -f "$d/summary.txt" ] || "$bin" train --config configs/synthetic_joint.toml "${common[@]}" --set seed=$seed --out "$d"
done
# last-epoch fused and per-view test accuracy of every run
for d in "$out"/*/; do
  tail -n 1 "$d/metrics.jsonl" | python3 -c "import json,sys; l=json.load(sys.stdin); t=l['test']; print('$(basename $d)', round(100*t['acc'],2), *(f\"{k}={100*v['acc']:.2f}\" for k,v in t['per_modality'].items()))"
done
