"""Where the last errors are: the images an average of networks still misses, set against the teacher and the chips.

    OMP_NUM_THREADS=2 python examples/error_anatomy.py runs/pins-aligned64 runs/pins-manifest.json \\
        ../shared/data/pins/teacher_dlib128.npz runs/controls/leader-hog.pt other/best-slim.pt --mirror

Averaging networks and mirror images stopped at 0.95 (RESULTS.md, width 192 and a second seed): the errors left are
shared. This says what kind they are, per split: how many the teacher (nearest class mean of its descriptors,
class means from train, as ``examples/teacher_baseline.py``) gets right, which a student could in principle learn
from it; how many are pictures where dlib's HOG detector found no face (the teacher file's ``face_detected``; the
chip is then cut around the whole picture); how many every member misses on its own; the identity pairs
confused most; and with ``--cosine``, how far the first checkpoint's features are from the teacher's descriptor on
the images it gets right and on those it misses. Label-free predictions (argmax of the mean softmax); labels only score them.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from edgenode.data import Manifest, load_split_arrays
from edgenode.distill import class_means, unit
from edgenode.ensemble import load_members, member_probabilities
from edgenode.errors import EdgenodeError
from edgenode.teacher import load_teacher


def teacher_predictions(teacher_path: str, manifest: Manifest) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per split: (the teacher's nearest-class-mean prediction, -1 without a descriptor; its face_detected; its
    descriptors centred on the train mean, as distillation's targets are)."""
    teacher = load_teacher(teacher_path)
    train, found = teacher.lookup(manifest.files("train"))
    labels = np.asarray(manifest.labels("train"))
    centre = train[found].mean(axis=0)
    means = class_means(train[found] - centre, labels[found], len(manifest.classes))
    detected_of = dict(zip(teacher.files, teacher.face_detected))
    out = {}
    for split in ("val", "test"):
        vectors, found = teacher.lookup(manifest.files(split))
        predicted = (unit(vectors - centre) @ means.T).argmax(axis=1)
        predicted[~found] = -1
        detected = np.array([bool(detected_of.get(f, False)) for f in manifest.files(split)])
        out[split] = (predicted, detected, vectors - centre)
    return out


def teacher_cosines(path: str, images: np.ndarray, targets: np.ndarray, batch_size: int) -> np.ndarray:
    """Per image, the cosine between one checkpoint's features and the teacher's centred descriptor: how closely
    the student reproduces what it was distilled towards (1 = the teacher's direction)."""
    import torch

    from edgenode.checkpoint import load_checkpoint
    from edgenode.data import normalize

    ckpt = load_checkpoint(path)
    model = ckpt.build_model().eval()
    features = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], ckpt.input_spec.mean, ckpt.input_spec.std)
            features.append(model(x, return_features=True)[0].numpy())
    return (unit(np.concatenate(features)) * unit(targets)).sum(axis=1)


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
        probs = one_pass = member_probabilities(members, images, args.batch_size)
        if args.mirror:
            mirrored = member_probabilities(members, np.ascontiguousarray(images[:, :, ::-1]), args.batch_size)
            probs = [(p + q) / 2 for p, q in zip(probs, mirrored)]
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
            cosine = teacher_cosines(args.checkpoints[0], images, targets, args.batch_size)
            first_right = one_pass[0].argmax(1) == labels  # the features are one pass's, so are the predictions
            groups = {"it gets right": first_right, "it misses, the teacher gets right": ~first_right & teacher_right,
                      "both miss": ~first_right & ~teacher_right}
            print(f"  {args.checkpoints[0]}: mean cosine to the teacher's centred descriptor on the images "
                  + "; ".join(f"{name} {cosine[mask].mean():.3f} ({int(mask.sum())})" for name, mask in groups.items() if mask.any()))


if __name__ == "__main__":
    main()
