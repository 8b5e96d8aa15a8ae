#!/usr/bin/env bash
# Rebuild, from ../shared alone, what a GPU session carries to the device (a new checkout has no runs/ or carry/):
#   bash examples/gpu/prepare_carry.sh        # carry/pins64a.tgz: HOG-aligned chips, teacher, near-duplicates (~3 min, 2 cores)
#   bash examples/gpu/prepare_carry.sh cnn    # also carry/pins64c.tgz: chips and teacher with the CNN fallback (~17 min more)
# Each step skips what is already there; the split is checked against the one every recorded run used.
set -euo pipefail
pins=${PINS:-../shared/data/pins}
split_sha=3c5d1c7305e2  # RESULTS.md, "Data and split": the manifest every run of RESULTS.md trained on

[ -f runs/pins-manifest.json ] || edgenode split "$pins" --out runs/pins-manifest.json
sha=$(python -c "from edgenode.data import Manifest; print(Manifest.load('runs/pins-manifest.json').sha256[:12])")
[ "$sha" = "$split_sha" ] || { echo "runs/pins-manifest.json has sha256 $sha…, not $split_sha…: runs on it cannot be paired with RESULTS.md's; remove it and rerun" >&2; exit 1; }

edgenode align "$pins" --manifest runs/pins-manifest.json --out runs/pins-aligned64 --size 64   # ~2 min
[ -f carry/pins64a.tgz ] || {
  python examples/gpu/pack_pins.py runs/pins-aligned64 runs/pins-manifest.json carry/pins64a --source "$pins"
  tar czf carry/pins64a.tgz -C carry pins64a
}
if [ "${1:-}" = cnn ]; then
  edgenode align "$pins" --manifest runs/pins-manifest.json --out runs/pins-aligned64c --size 64 --cnn-fallback
  [ -f runs/teacher-cnn/teacher_dlib128_cnn.npz ] || edgenode teacher "$pins" --manifest runs/pins-manifest.json --cnn-fallback \
    --out runs/teacher-cnn/teacher_dlib128_cnn.npz --check "$pins/teacher_dlib128.npz" --workers 2   # ~14 min
  [ -f carry/pins64c.tgz ] || {
    python examples/gpu/pack_pins.py runs/pins-aligned64c runs/pins-manifest.json carry/pins64c --source "$pins" \
      --teacher runs/teacher-cnn/teacher_dlib128_cnn.npz
    tar czf carry/pins64c.tgz -C carry pins64c
  }
fi
ls -l carry/*.tgz
