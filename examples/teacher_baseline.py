"""The teacher's own label-free accuracy: nearest class mean of its descriptors, class means from the train split.

    python examples/teacher_baseline.py ../shared/data/pins/teacher_dlib128.npz runs/pins-manifest.json

This is the ceiling a distilled student aims at (RESULTS.md, accuracy table). Descriptors are centred on the
train mean and compared by cosine, exactly as ``edgenode.distill`` builds its targets.
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
