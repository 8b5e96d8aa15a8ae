"""Label-free accuracy of checkpoints' *weight* average (one network, no extra work at inference), against the
first checkpoint, on val and test, with a paired McNemar test.

    OMP_NUM_THREADS=2 python examples/weight_averaging.py runs/pins-aligned64 runs/pins-manifest.json \
        <faceode-pins-aligned.pt of commit 5d6df05> runs/cpu-ens/control/last.pt runs/cpu-ens/ens-kd/last.pt

(The shipped file now records the CNN-fallback alignment and refuses the HOG-only chips of runs/pins-aligned64;
the measurement in RESULTS.md used it as it was: ``git show 5d6df05:examples/pretrained/faceode-pins-aligned.pt``.)

Averaging the weights only makes sense for checkpoints fine-tuned from one start (examples/ensemble_accuracy.py
averages the predictions of independent networks instead, at one network's cost per member). Every subset of
two or more checkpoints is scored; pass ``--save FILE`` to write the average of all of them as a checkpoint that
``edgenode export`` takes.
"""

from __future__ import annotations

import argparse
from itertools import combinations

from edgenode.checkpoint import save_checkpoint
from edgenode.data import Manifest, load_split_arrays
from edgenode.ensemble import average_weights, load_members, member_probabilities
from edgenode.errors import EdgenodeError
from edgenode.metrics import mcnemar_p, wilson_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("checkpoints", nargs="+", help="the first is the reference the others are compared with")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--save", help="write the average of all the checkpoints here")
    args = parser.parse_args()

    if args.save and len(args.checkpoints) < 2:
        parser.error("--save writes an average: pass two or more checkpoints")
    try:
        manifest = Manifest.load(args.manifest)
        members = load_members(args.checkpoints, manifest, args.data)
        groups = [(i,) for i in range(len(members))]
        groups += [g for k in range(2, len(members) + 1) for g in combinations(range(len(members)), k)]
        networks = [members[g[0]] if len(g) == 1 else average_weights([members[i] for i in g]) for g in groups]
        data = {split: load_split_arrays(manifest, args.data, split) for split in ("val", "test")}
    except EdgenodeError as exc:
        raise SystemExit(f"error: {exc}") from None
    names = [f"#{i + 1}" for i in range(len(members))]
    for name, path in zip(names, args.checkpoints):
        print(f"{name}: {path}")
    for split, (images, labels) in data.items():
        right = [p.argmax(1) == labels for p in member_probabilities(networks, images, args.batch_size)]
        for group, ok in zip(groups, right):
            lo, hi = wilson_interval(int(ok.sum()), len(labels))
            only_ref, only_this = int((right[0] & ~ok).sum()), int((ok & ~right[0]).sum())
            label = ("mean of " if len(group) > 1 else "") + " + ".join(names[i] for i in group)
            versus = "" if group == (0,) else (f"  only #1 right {only_ref}, only this right {only_this}, "
                                                 f"McNemar p = {mcnemar_p(only_ref, only_this):.2g}")
            print(f"{split:4s} {label:24s} {ok.mean():.3f} [{lo:.3f}, {hi:.3f}]{versus}", flush=True)
    if args.save:
        print(f"saved the average of all {len(members)}: {save_checkpoint(args.save, networks[-1])}")


if __name__ == "__main__":
    main()
