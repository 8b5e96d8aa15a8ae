"""Where the last errors are: the images an average of networks still misses, set against the teacher and the chips.

    OMP_NUM_THREADS=2 python examples/error_anatomy.py runs/pins-aligned64 runs/pins-manifest.json \\
        ../shared/data/pins/teacher_dlib128.npz runs/controls/leader-hog.pt other/best-slim.pt --mirror

Averaging networks and mirror images stopped at 0.95 (RESULTS.md, width 192 and a second seed): the errors left are
shared. This says what kind they are, per split: how many the teacher (nearest class mean of its descriptors,
class means from train, with ``examples/teacher_baseline.py``'s code) gets right, which a student could in principle learn
from it; how many are pictures where dlib's HOG detector found no face (the teacher file's ``face_detected``; the
chip is then cut around the whole picture); how many every member misses on its own; the identity pairs
confused most; and with ``--cosine``, how far the first checkpoint's features are from the teacher's descriptor on
the images it gets right and on those it misses. Label-free predictions (argmax of the mean softmax); labels only score them.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from teacher_baseline import feature_cosine, nearest_class_means, nearest_mean_predictions  # a sibling in examples/

from edgenode.data import Manifest, load_split_arrays
from edgenode.ensemble import load_members, member_probabilities
from edgenode.errors import EdgenodeError
from edgenode.teacher import load_teacher


def teacher_predictions(teacher_path: str, manifest: Manifest) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split: (the teacher's nearest-class-mean prediction, -1 without a descriptor; its face_detected; its
    descriptors centred on the train mean, as distillation's targets are)."""
    teacher = load_teacher(teacher_path)
    centre, means = nearest_class_means(teacher, manifest)
    detected_of = dict(zip(teacher.files, teacher.face_detected))
    out = {}
    for split in ("val", "test"):
        predicted, _, targets = nearest_mean_predictions(teacher, manifest, split, centre, means)
        detected = np.array([bool(detected_of.get(f, False)) for f in manifest.files(split)])
        out[split] = (predicted, detected, targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("teacher")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--mirror", action="store_true", help="each member on the picture and its mirror image")
    parser.add_argument("--pairs", type=int, default=8, help="confused identity pairs to list")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cosine", action="store_true",
                        help="also the first checkpoint's cosine to the teacher on the images it gets right and wrong")
    args = parser.parse_args()

    manifest = Manifest.load(args.manifest)
    try:
        members = load_members(args.checkpoints, manifest, args.data)
        teacher = teacher_predictions(args.teacher, manifest)
    except EdgenodeError as exc:
        raise SystemExit(str(exc)) from None
    for split in ("val", "test"):
        images, labels = load_split_arrays(manifest, args.data, split)
        probs = member_probabilities(members, images, args.batch_size, mirror=args.mirror)
        predicted = np.mean(probs, axis=0).argmax(1)
        wrong = predicted != labels
        members_wrong = np.sum([p.argmax(1) != labels for p in probs], axis=0)
        teacher_pred, detected, targets = teacher[split]
        teacher_right = teacher_pred == labels
        n, e = len(labels), int(wrong.sum())
        print(f"{split}: {n} images; the average of {len(members)} misses {e} ({e / n:.1%})")
        print(f"  the teacher gets {int((wrong & teacher_right).sum())} of them right "
              f"(it misses {int((~teacher_right).sum())} of all {n}; both miss {int((wrong & ~teacher_right).sum())})")
        print(f"  no face found by HOG: {int((wrong & ~detected).sum())} of the {e} "
              f"({int((~detected).sum())} of all {n}, {(~detected).mean():.1%}; the average misses "
              f"{(wrong & ~detected).sum() / max(1, (~detected).sum()):.0%} of those, {(wrong & detected).sum() / max(1, detected.sum()):.1%} of the others)")
        spread = Counter(int(k) for k in members_wrong[wrong])
        print("  members that miss each of them alone: "
              + ", ".join(f"{k} of {len(members)}: {spread[k]}" for k in sorted(spread)))
        pairs = Counter((manifest.classes[t], manifest.classes[p]) for t, p in zip(labels[wrong], predicted[wrong]))
        both = Counter(frozenset(pair) for pair in pairs.elements())
        print("  identity pairs confused most (either way): "
              + "; ".join(f"{' / '.join(sorted(pair))} {count}" for pair, count in both.most_common(args.pairs)))
        print(f"  {len(both)} distinct pairs among the {e} errors; true identities involved: "
              f"{len({t for t, _ in pairs})} of {len(manifest.classes)}")
        if args.cosine:
            cosine = feature_cosine(args.checkpoints[0], images, targets, args.batch_size)
            one_pass = member_probabilities(members[:1], images, args.batch_size)[0] if args.mirror else probs[0]
            first_right = one_pass.argmax(1) == labels  # the features are one pass's, so are the predictions
            groups = {"it gets right": first_right, "it misses, the teacher gets right": ~first_right & teacher_right,
                      "both miss": ~first_right & ~teacher_right}
            print(f"  {args.checkpoints[0]}: mean cosine to the teacher's centred descriptor on the images "
                  + "; ".join(f"{name} {cosine[mask].mean():.3f} ({int(mask.sum())})" for name, mask in groups.items() if mask.any()))


if __name__ == "__main__":
    main()
