"""Label-free accuracy of checkpoints alone and of their average (mean softmax), on val and test, with a paired
McNemar test for each pair of single checkpoints (how to tell two recipes apart on the same images).

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

from edgenode.data import Manifest, load_split_arrays
from edgenode.ensemble import load_members, member_probabilities
from edgenode.errors import EdgenodeError
from edgenode.metrics import mcnemar_p, wilson_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    manifest = Manifest.load(args.manifest)
    try:
        members = load_members(args.checkpoints, manifest, args.data)
    except EdgenodeError as exc:
        raise SystemExit(str(exc)) from None
    names = [f"#{i + 1}" for i in range(len(members))]
    for name, path in zip(names, args.checkpoints):
        print(f"{name}: {path}")
    for split in ("val", "test"):
        images, labels = load_split_arrays(manifest, args.data, split)
        probs = member_probabilities(members, images, args.batch_size)
        groups = [(i,) for i in range(len(members))] + [g for k in range(2, len(members) + 1) for g in combinations(range(len(members)), k)]
        for group in groups:
            correct = int((np.mean([probs[i] for i in group], axis=0).argmax(1) == labels).sum())
            lo, hi = wilson_interval(correct, len(labels))
            print(f"{split:4s} {' + '.join(names[i] for i in group):16s} {correct / len(labels):.3f} [{lo:.3f}, {hi:.3f}]")
        right = [p.argmax(1) == labels for p in probs]
        for a, b in combinations(range(len(members)), 2):
            only_a, only_b = int((right[a] & ~right[b]).sum()), int((right[b] & ~right[a]).sum())
            print(f"{split:4s} {names[a]} vs {names[b]}: only {names[a]} right {only_a}, only {names[b]} right {only_b}, "
                  f"McNemar p = {mcnemar_p(only_a, only_b):.3g}")


if __name__ == "__main__":
    main()
