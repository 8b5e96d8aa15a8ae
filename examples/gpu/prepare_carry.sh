#!/usr/bin/env bash
# Rebuild, from ../shared alone, what a GPU session carries to the device (a new checkout has no runs/ or carry/):
#   bash examples/gpu/prepare_carry.sh        # carry/pins64a.tgz: HOG-aligned chips, teacher, near-duplicates (~3 min, 2 cores)
#   bash examples/gpu/prepare_carry.sh cnn    # also carry/pins64c.tgz: chips and teacher with the CNN fallback (~17 min more)
# It runs the checkout's .venv when there is one (else $PYTHON, or python3). Each step skips what is already there, and the
# split is checked against the one every recorded run used. KD_TARGETS=file.npz also packs class probabilities for
# the ens-kd recipes (examples/ensemble_targets.py); they come from trained networks, not from ../shared, so
# without it those recipes cannot run from these packs.
set -euo pipefail
cd "$(dirname "$0")/../.."
pins=${PINS:-../shared/data/pins}
py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
edgenode() { "$py" -m edgenode "$@"; }
split_sha=3c5d1c7305e2  # RESULTS.md, "Data and split": the manifest every run of RESULTS.md trained on
kd=()
[ -n "${KD_TARGETS:-}" ] && kd=(--kd-targets "$KD_TARGETS")

[ -f runs/pins-manifest.json ] || edgenode split "$pins" --out runs/pins-manifest.json
sha=$("$py" -c "from edgenode.data import Manifest; print(Manifest.load('runs/pins-manifest.json').sha256[:12])")
[ "$sha" = "$split_sha" ] || { echo "runs/pins-manifest.json has sha256 $sha…, not $split_sha…: runs on it cannot be paired with RESULTS.md's; remove it and rerun" >&2; exit 1; }

pack() {  # pack <aligned copy> <name> [pack_pins.py options]: carry/<name>.tgz, written whole or not at all
  local data=$1 name=$2
  shift 2
  [ -f "carry/$name.tgz" ] && return
  rm -rf "carry/$name"
  "$py" examples/gpu/pack_pins.py "$data" runs/pins-manifest.json "carry/$name" --source "$pins" "$@"
  tar czf "carry/$name.tgz.tmp" -C carry "$name" && mv "carry/$name.tgz.tmp" "carry/$name.tgz"
}

edgenode align "$pins" --manifest runs/pins-manifest.json --out runs/pins-aligned64 --size 64   # ~2 min
pack runs/pins-aligned64 pins64a ${kd[@]+"${kd[@]}"}
if [ "${1:-}" = cnn ]; then
  edgenode align "$pins" --manifest runs/pins-manifest.json --out runs/pins-aligned64c --size 64 --cnn-fallback
  [ -f runs/teacher-cnn/teacher_dlib128_cnn.npz ] || edgenode teacher "$pins" --manifest runs/pins-manifest.json --cnn-fallback \
    --out runs/teacher-cnn/teacher_dlib128_cnn.npz --check "$pins/teacher_dlib128.npz" --workers 2   # ~14 min
  pack runs/pins-aligned64c pins64c --teacher runs/teacher-cnn/teacher_dlib128_cnn.npz ${kd[@]+"${kd[@]}"}
fi
ls -l carry/*.tgz
