"""Label-free accuracy of checkpoints alone and of their average (mean softmax), on val and test, with a paired
McNemar test for each pair of single checkpoints (how to tell two recipes apart on the same images). Beyond four
checkpoints it prints, instead of every subset, each one, all of them, and for each size the subset that val picks
with its test accuracy (test plays no part in the choice).

    OMP_NUM_THREADS=2 python examples/ensemble_accuracy.py runs/pins-aligned64 runs/pins-manifest.json \
        runs/gpu-aligned/w5-rk4x4/best-slim.pt runs/gpu-aligned/kd-pool-w5/best-slim.pt
    ... --mirror     (each member on the picture and its mirror image, as `export --mirror-average` serves one)

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

ALL_SUBSETS_UP_TO = 4  # members; beyond, the subset chosen on val is printed per size instead of every subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mirror", action="store_true",
                        help="each member's probabilities averaged over the picture and its mirror image (twice the "
                             "passes; `export --mirror-average` sums the two views' unit features instead)")
    args = parser.parse_args()

    manifest = Manifest.load(args.manifest)
    try:
        members = load_members(args.checkpoints, manifest, args.data)
    except EdgenodeError as exc:
        raise SystemExit(str(exc)) from None
    names = [f"#{i + 1}" for i in range(len(members))]
    for name, path in zip(names, args.checkpoints):
        print(f"{name}: {path}")
    probs, labels = {}, {}
    for split in ("val", "test"):
        images, labels[split] = load_split_arrays(manifest, args.data, split)
        probs[split] = member_probabilities(members, images, args.batch_size, mirror=args.mirror)

    def accuracy(split: str, group: tuple[int, ...]) -> tuple[int, str]:
        correct = int((np.mean([probs[split][i] for i in group], axis=0).argmax(1) == labels[split]).sum())
        lo, hi = wilson_interval(correct, len(labels[split]))
        return correct, f"{correct / len(labels[split]):.3f} [{lo:.3f}, {hi:.3f}]"

    everyone = tuple(range(len(members)))
    if len(members) <= ALL_SUBSETS_UP_TO:
        groups = [g for k in range(1, len(members) + 1) for g in combinations(everyone, k)]
        for split in ("val", "test"):
            for group in groups:
                print(f"{split:4s} {' + '.join(names[i] for i in group):16s} {accuracy(split, group)[1]}")
    else:  # 2^n subsets are too many to read: each member, all of them, and per size the subset val picks
        for split in ("val", "test"):
            for i in everyone:
                print(f"{split:4s} {names[i]:16s} {accuracy(split, (i,))[1]}")
            print(f"{split:4s} {'all ' + str(len(members)):16s} {accuracy(split, everyone)[1]}")
        for k in range(2, len(members)):
            best = max(combinations(everyone, k), key=lambda group: accuracy("val", group)[0])
            print(f"best of {k} by val: {' + '.join(names[i] for i in best)}: val {accuracy('val', best)[1]}, "
                  f"test {accuracy('test', best)[1]}")
    for split in ("val", "test"):
        right = [p.argmax(1) == labels[split] for p in probs[split]]
        for a, b in combinations(everyone, 2):
            only_a, only_b = int((right[a] & ~right[b]).sum()), int((right[b] & ~right[a]).sum())
            print(f"{split:4s} {names[a]} vs {names[b]}: only {names[a]} right {only_a}, only {names[b]} right {only_b}, "
                  f"McNemar p = {mcnemar_p(only_a, only_b):.3g}")


if __name__ == "__main__":
    main()
