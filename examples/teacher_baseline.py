"""The teacher's own label-free accuracy: nearest class mean of its descriptors, class means from the train split.

    python examples/teacher_baseline.py ../shared/data/pins/teacher_dlib128.npz runs/pins-manifest.json
    python examples/teacher_baseline.py TEACHER MANIFEST --student runs/gpu/kd-pool-w5/best.pt --data ../shared/data/pins

This is the ceiling a distilled student aims at (RESULTS.md, accuracy table). Descriptors are centred on the
train mean and compared by cosine, exactly as ``edgenode.distill`` builds its targets. With ``--student``, also
how close a distilled checkpoint's features are to those targets (mean cosine, 1 = the teacher's direction) on
every 7th train image and on the test split: a student that is far from its teacher on its own train images
underfits the targets.
"""

from __future__ import annotations

import argparse

import numpy as np

from edgenode.data import Manifest
from edgenode.distill import class_means, unit
from edgenode.metrics import wilson_interval
from edgenode.teacher import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("manifest")
    parser.add_argument("--student", nargs="*", default=[], help="distilled checkpoints (faceode preset)")
    parser.add_argument("--data", help="data root, needed with --student")
    args = parser.parse_args()
    if args.student and not args.data:
        parser.error("--student needs --data (the images the student reads)")
    teacher, manifest = load_teacher(args.teacher), Manifest.load(args.manifest)
    train, found = teacher.lookup(manifest.files("train"))
    labels = np.asarray(manifest.labels("train"))
    centre = train[found].mean(axis=0)
    means = class_means(train[found] - centre, labels[found], len(manifest.classes))
    for split in ("val", "test"):
        vectors, found = teacher.lookup(manifest.files(split))
        truth = np.asarray(manifest.labels(split))
        predicted = (unit(vectors - centre) @ means.T).argmax(axis=1)
        predicted[~found] = -1  # no descriptor: counted as an error
        correct = int((predicted == truth).sum())
        low, high = wilson_interval(correct, len(truth))
        print(f"{split}: {correct / len(truth):.3f} [{low:.3f}, {high:.3f}] on {len(truth)} images "
              f"({int((~found).sum())} without a descriptor)")
    for path in args.student:
        for split, step in (("train", 7), ("test", 1)):
            cosine = student_cosine(path, args.data, manifest, teacher, centre, split, step)
            print(f"{path} {split}: mean cosine to the teacher's centred descriptors {cosine.mean():.3f} "
                  f"(median {np.median(cosine):.3f}, {len(cosine)} images)")


def student_cosine(path, data, manifest, teacher, centre, split: str, step: int) -> np.ndarray:
    import torch

    from edgenode.checkpoint import load_checkpoint
    from edgenode.data import load_split_arrays, normalize

    ckpt = load_checkpoint(path)
    model = ckpt.build_model().eval()
    images = load_split_arrays(manifest, data, split)[0][::step]
    features = []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            x = normalize(images[start : start + 128], ckpt.input_spec.mean, ckpt.input_spec.std)
            features.append(model(x, return_features=True)[0].numpy())
    targets, _ = teacher.lookup(manifest.files(split)[::step])
    return (unit(np.concatenate(features)) * unit(targets - centre)).sum(axis=1)


if __name__ == "__main__":
    main()
