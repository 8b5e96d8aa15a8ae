"""Two checkpoints paired image by image when each reads its own copy of the pictures (another input size, another
alignment): label-free accuracy of each on val and test, and a paired McNemar test.

    OMP_NUM_THREADS=2 python examples/paired_accuracy.py \
        runs/cpu-margin/control/best.pt runs/pins-aligned64 runs/pins-manifest.json \
        runs/cpu-input96/s96/best.pt runs/pins-aligned96 runs/pins-manifest96.json

``examples/ensemble_accuracy.py`` pairs checkpoints that read one data folder through one manifest. A model trained
at 96 px has a manifest of its own (the image size and the normalisation are part of it), so this pairs across
two: they must list the same files in each split, in the same order, or the pairing would compare different faces.
"""

from __future__ import annotations

import argparse

from edgenode.data import Manifest, load_split_arrays
from edgenode.ensemble import load_members, member_probabilities
from edgenode.errors import EdgenodeError
from edgenode.metrics import mcnemar_p, wilson_interval

SPLITS = ("val", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for side in ("a", "b"):
        parser.add_argument(f"checkpoint_{side}")
        parser.add_argument(f"data_{side}")
        parser.add_argument(f"manifest_{side}")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    try:
        sides = [(args.checkpoint_a, args.data_a, Manifest.load(args.manifest_a)),
                 (args.checkpoint_b, args.data_b, Manifest.load(args.manifest_b))]
        for split in SPLITS:
            if sides[0][2].files(split) != sides[1][2].files(split):
                raise SystemExit(f"{args.manifest_a} and {args.manifest_b} list other {split} files: the two models "
                                 "were not tested on the same faces (make both manifests with the same `edgenode split` "
                                 "options but --image-size)")
        members = [load_members([path], manifest, data)[0] for path, data, manifest in sides]  # both checked first
        right = []
        for name, (path, data, manifest), ckpt in zip("AB", sides, members):
            print(f"{name}: {path} on {data} ({ckpt.input_spec.image_size} px)")
            right.append({})
            for split in SPLITS:
                images, labels = load_split_arrays(manifest, data, split)
                (probs,) = member_probabilities([ckpt], images, args.batch_size)
                right[-1][split] = probs.argmax(1) == labels
                correct = int(right[-1][split].sum())
                lo, hi = wilson_interval(correct, len(labels))
                print(f"{split:4s} {name} {correct / len(labels):.3f} [{lo:.3f}, {hi:.3f}]")
    except EdgenodeError as exc:
        raise SystemExit(f"error: {exc}") from None
    for split in SPLITS:
        a, b = right[0][split], right[1][split]
        only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
        print(f"{split:4s} A vs B: only A right {only_a}, only B right {only_b}, McNemar p = {mcnemar_p(only_a, only_b):.3g}")


if __name__ == "__main__":
    main()
