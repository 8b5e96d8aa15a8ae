#!/usr/bin/env bash
# The GPU rows of `edgenode bench` for the shipped model, scored on the test split of a carried pack:
#   bash examples/gpu/bench_gpu.sh carry/pins64a.tgz $OUT        # on the device (PYTHONPATH=. is set here)
# Its two parts as run by hand on an H200 (RESULTS.md, "GPU rows on an H200"): the first took 53 s without the peaks;
# the second had timed one compiled row (and four others) when it was cut at 100 s, so allow about 40 s a compiled row.
# It unpacks the aligned chips, relabels the shipped checkpoint to the pack's HOG-only chips (the runtime refuses
# chips prepared otherwise than its checkpoint records; RESULTS.md, "What the next GPU session should do"), then runs
#   1. bench without torch.compile: the adaptive baseline (dopri5) on the CPU and on the GPU, RK4 × 4 eager in
#      FP32 (IEEE, TF32 off)/FP16/BF16 on the GPU, with accuracy and agreement on the test split, and the peaks;
#   2. the same with the compiled (CUDA-graph) rows, inside COMPILE_SECONDS (default 210: it times the CPU and eager
#      rows again, then a compiled row in each precision, and compiling is the slow part); each row's line is kept
#      in bench-compiled.log as it finishes, and bench.json is rewritten after each row, so a cut run keeps them.
set -euo pipefail
pack=$(realpath "$1") out=$(realpath "$2")   # before the cd: paths relative to where it was started
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH=. pack out py work
tar xzf "$pack" -C "$work"
data=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
export data
"$py" examples/relabel_alignment.py examples/pretrained/faceode-pins-aligned.pt "$work/leader-hog.pt" --method dlib-5pt
bench() {  # bench <name> [options]
  local name=$1
  shift
  "$py" -m edgenode bench "$work/leader-hog.pt" --data "$data" --manifest "$data/manifest.json" --split test \
    --baseline-solver dopri5 --repeats "${REPEATS:-20}" --warmup 5 --out "$out/$name" "$@" 2>&1 | tee "$out/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv" 2>&1 || true
bench bench-eager --no-compile || echo "eager bench stopped (exit $?)"   # the compiled rows are still worth their time
export -f bench
timeout "${COMPILE_SECONDS:-210}" bash -o pipefail -c 'bench bench-compiled --compile --no-peak' || echo "compiled bench stopped (exit $?)"
