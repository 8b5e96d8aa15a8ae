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
    centre, means = nearest_class_means(teacher, manifest)
    for split in ("val", "test"):
        predicted, found, _ = nearest_mean_predictions(teacher, manifest, split, centre, means)
        truth = np.asarray(manifest.labels(split))
        correct = int((predicted == truth).sum())
        low, high = wilson_interval(correct, len(truth))
        print(f"{split}: {correct / len(truth):.3f} [{low:.3f}, {high:.3f}] on {len(truth)} images "
              f"({int((~found).sum())} without a descriptor)")
    for path in args.student:
        for split, step in (("train", 7), ("test", 1)):
            cosine = student_cosine(path, args.data, manifest, teacher, centre, split, step)
            print(f"{path} {split}: mean cosine to the teacher's centred descriptors {cosine.mean():.3f} "
                  f"(median {np.median(cosine):.3f}, {len(cosine)} images)")


def nearest_class_means(teacher, manifest) -> tuple[np.ndarray, np.ndarray]:
    """(the train descriptors' mean, each class's unit mean of the centred train descriptors), as distillation
    centres its targets."""
    train, found = teacher.lookup(manifest.files("train"))
    labels = np.asarray(manifest.labels("train"))
    centre = train[found].mean(axis=0)
    return centre, class_means(train[found] - centre, labels[found], len(manifest.classes))


def nearest_mean_predictions(teacher, manifest, split: str, centre, means) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the teacher's class for each image of ``split``, -1 where it has no descriptor; which have one; the
    descriptors centred on ``centre``)."""
    vectors, found = teacher.lookup(manifest.files(split))
    predicted = (unit(vectors - centre) @ means.T).argmax(axis=1)
    predicted[~found] = -1  # no descriptor: counted as an error
    return predicted, found, vectors - centre


def student_outputs(path, images: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of a checkpoint on uint8 NHWC ``images``, one pass each."""
    import torch

    from edgenode.checkpoint import load_checkpoint
    from edgenode.data import normalize

    ckpt = load_checkpoint(path)
    model = ckpt.build_model().eval()
    features, logits = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], ckpt.input_spec.mean, ckpt.input_spec.std)
            feats, out = model(x, return_features=True)
            features.append(feats.numpy())
            logits.append(out.numpy())
    return np.concatenate(features), np.concatenate(logits)


def feature_cosine(path, images: np.ndarray, targets: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Per image, the cosine between a checkpoint's features on uint8 NHWC ``images`` and ``targets`` (the
    teacher's centred descriptors): 1 = the teacher's direction."""
    return (unit(student_outputs(path, images, batch_size)[0]) * unit(targets)).sum(axis=1)


def student_cosine(path, data, manifest, teacher, centre, split: str, step: int) -> np.ndarray:
    from edgenode.data import load_split_arrays

    images = load_split_arrays(manifest, data, split)[0][::step]
    targets, _ = teacher.lookup(manifest.files(split)[::step])
    return feature_cosine(path, images, targets - centre)


if __name__ == "__main__":
    main()
