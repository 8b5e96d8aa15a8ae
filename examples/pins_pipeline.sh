#!/usr/bin/env bash
# The real-data runs behind RESULTS.md, on the Pins copy in ../shared/data/pins (CPU; ~20 s/epoch for the paper
# preset and a few minutes/epoch for the default preset on 2 idle cores; far less on a GPU).
#   bash examples/pins_pipeline.sh [paper|odenet] [EPOCHS]
set -euo pipefail
arch=${1:-odenet}
epochs=${2:-60}
data=${PINS:-../shared/data/pins}
run=runs/pins-$arch

[ -f runs/pins-manifest.json ] || edgenode split "$data" --out runs/pins-manifest.json   # 86/identity, 60/17/9, seed 0
if [ -f "$run/last.pt" ]; then resume=--resume; else resume=; fi
edgenode train "$data" --manifest runs/pins-manifest.json --arch "$arch" --out "$run" --epochs "$epochs" --no-progress $resume
# Steps: the trained discretisation for a fixed-step checkpoint (paper: Euler × 20), else chosen on val (auto).
edgenode export "$run/best.pt" --precision fp32,fp16,int8 --data "$data" --out "$run/export"
edgenode parity "$run/export" --reference "$run/best.pt" --data "$data" --out "$run/parity" || echo "parity: some artifact failed (see $run/parity/parity.md)"
edgenode bench "$run/export" --reference "$run/best.pt" --data "$data" --sweep-steps 1,2,4,8 --out "$run/bench"
