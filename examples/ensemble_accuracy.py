"""Label-free accuracy of checkpoints alone and of their average (mean softmax), on val and test.

    OMP_NUM_THREADS=2 python examples/ensemble_accuracy.py runs/pins-aligned64 runs/pins-manifest.json \
        runs/gpu-aligned/w5-rk4x4/best-slim.pt runs/gpu-aligned/kd-pool-w5/best-slim.pt

An ensemble costs one network per member at inference and is not built into export; this measures how much of
the gap to the teacher is seed-to-seed variance (what averaging removes) rather than bias. Every checkpoint runs
with its own trained solver and normalisation on the data folder it was trained on (an aligned copy for aligned
models: the checkpoints must agree on alignment, which the data folder's record is checked against).
"""

from __future__ import annotations

import argparse
from itertools import combinations

import numpy as np

from edgenode.align import check_data_alignment
from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split_arrays, normalize
from edgenode.errors import EdgenodeError
from edgenode.export.steps import solve_logits
from edgenode.metrics import wilson_interval
from edgenode.runtime.predictor import softmax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    manifest = Manifest.load(args.manifest)
    ckpts = [load_checkpoint(path) for path in args.checkpoints]
    for path, ckpt in zip(args.checkpoints, ckpts):
        if ckpt.manifest_sha256 != manifest.sha256:
            raise SystemExit(f"{path}: trained on another split (manifest {ckpt.manifest_sha256[:12]}…, "
                             f"not {manifest.sha256[:12]}…) — pass the manifest it was trained on")
        try:
            check_data_alignment(ckpt.input_spec, args.data)
        except EdgenodeError as exc:
            raise SystemExit(f"{path}: {exc}") from None
    names = [f"#{i + 1}" for i in range(len(ckpts))]
    for name, path in zip(names, args.checkpoints):
        print(f"{name}: {path}")
    for split in ("val", "test"):
        images, labels = load_split_arrays(manifest, args.data, split)
        probs = []
        for ckpt in ckpts:  # each with its trained solver, batched
            x = normalize(images, ckpt.input_spec.mean, ckpt.input_spec.std)
            logits, _ = solve_logits(ckpt.build_model(), ckpt.model_config.solver, x, batch_size=args.batch_size)
            probs.append(softmax(logits))
        groups = [(i,) for i in range(len(ckpts))] + [g for k in range(2, len(ckpts) + 1) for g in combinations(range(len(ckpts)), k)]
        for group in groups:
            correct = int((np.mean([probs[i] for i in group], axis=0).argmax(1) == labels).sum())
            lo, hi = wilson_interval(correct, len(labels))
            print(f"{split:4s} {' + '.join(names[i] for i in group):16s} {correct / len(labels):.3f} [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
