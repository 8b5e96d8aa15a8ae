"""The teacher's descriptors in a space where every direction varies equally within an identity.

    python examples/whiten_teacher.py ../shared/data/pins/teacher_dlib128.npz runs/pins-manifest.json --out runs/cpu-whiten/teacher_whitened.npz
    python examples/whiten_teacher.py TEACHER MANIFEST --student runs/controls/leader-hog.pt --data runs/pins-aligned64

dlib's descriptors vary within one identity (pose, light, expression) more in some directions than in others.
Distillation asks the student to match the whole descriptor, and a CPU pilot found that matching it more closely
overall (a heavier descriptor loss) costs accuracy (RESULTS.md, "A CPU pilot: a heavier descriptor loss does not
pay"). This script maps the descriptors through the inverse square root of their within-class covariance
(shrunk towards the identity by ``--shrink`` × its mean eigenvalue, since a 128-d covariance from 6,300 unit
vectors has a near-zero direction), fitted on the train split only. In that space, a direction counts in a cosine
by how well it separates identities rather than by how much it varies.

It prints, on val and test, the teacher's nearest-class-mean accuracy as distillation computes it (centred on the
train mean, unit length, class means of the train split) before and after the map; ``--out`` writes a teacher
``.npz`` of the mapped descriptors for ``edgenode train --teacher``, with the original's provenance, so that the
student learns them and the KL term's probabilities come from the mapped teacher. With ``--student`` (a checkpoint
distilled from the teacher as stored), the same for its own features, both mapped the same way, and how well their
cosine to the teacher, in either space, tells the images it gets right from those it misses (the area under the
ROC curve). A student of the mapped teacher is measured against the file it learned with
``examples/teacher_baseline.py --student``.

Measured (RESULTS.md, "The teacher in a whitened space"): the mapped teacher classifies better (test 0.992
against 0.984), and teaches no better (two seeds of a CPU pilot, level).
"""

from __future__ import annotations

import argparse

import numpy as np

from edgenode.data import Manifest
from edgenode.distill import class_means, unit
from edgenode.teacher import TeacherEmbeddings, load_teacher, save_teacher


def within_class_whitening(embedding: np.ndarray, labels: np.ndarray, num_classes: int, shrink: float) -> np.ndarray:
    """(D, D) symmetric map ``(S_w + shrink · mean eigenvalue · I)^(-1/2)``, ``S_w`` the within-class covariance
    of the unit descriptors ``embedding`` about their class centroids."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    centroids = np.zeros((num_classes, embedding.shape[1]))
    np.add.at(centroids, labels, embedding)
    centroids /= np.maximum(counts, 1.0)[:, None]
    deviation = embedding - centroids[labels]
    covariance = deviation.T @ deviation / len(deviation)
    ridge = shrink * np.trace(covariance) / len(covariance)
    values, vectors = np.linalg.eigh(covariance + ridge * np.eye(len(covariance)))
    return (vectors / np.sqrt(values)) @ vectors.T


def ncm_accuracy(train: np.ndarray, train_labels: np.ndarray, vectors: np.ndarray, found: np.ndarray,
                 labels: np.ndarray, num_classes: int) -> float:
    """Nearest class mean as ``edgenode.distill`` builds it: centred on the train mean, unit length; an image
    without a descriptor counts as an error."""
    centre = train.mean(axis=0)
    means = class_means(train - centre, train_labels, num_classes)
    predicted = (unit(vectors - centre) @ means.T).argmax(axis=1)
    return float(((predicted == labels) & found).mean())


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("manifest")
    parser.add_argument("--shrink", type=float, default=0.3, help="ridge added to the covariance, in units of its mean eigenvalue")
    parser.add_argument("--out", help="write the mapped descriptors here, as a teacher .npz")
    parser.add_argument("--student", help="a distilled checkpoint (faceode preset) to diagnose")
    parser.add_argument("--data", help="the images the student reads, needed with --student")
    args = parser.parse_args()
    if args.student and not args.data:
        parser.error("--student needs --data (the images the student reads)")
    teacher, manifest = load_teacher(args.teacher), Manifest.load(args.manifest)
    num_classes = len(manifest.classes)
    train, found = teacher.lookup(manifest.files("train"))
    labels = np.asarray(manifest.labels("train"))[found]
    centre = train[found].mean(axis=0)
    unit_train = unit(train[found] - centre)
    whiten = within_class_whitening(unit_train, labels, num_classes, args.shrink)

    def mapped(x: np.ndarray) -> np.ndarray:  # as the teacher file of --out holds them
        return unit(x - centre) @ whiten

    print(f"{args.teacher}: within-class whitening fitted on {len(labels)} train descriptors, shrink {args.shrink}")
    for split in ("val", "test"):
        vectors, has = teacher.lookup(manifest.files(split))
        truth = np.asarray(manifest.labels(split))
        plain = ncm_accuracy(train[found], labels, vectors, has, truth, num_classes)
        white = ncm_accuracy(mapped(train[found]), labels, mapped(vectors), has, truth, num_classes)
        print(f"{split}: teacher nearest class mean {plain:.3f} as stored, {white:.3f} whitened ({len(truth)} images)")
    if args.out:
        out = TeacherEmbeddings(teacher.files, mapped(teacher.embedding).astype(np.float32), teacher.face_detected,
                                teacher.provenance)
        print(f"wrote {save_teacher(args.out, out)}")
    if args.student:
        diagnose_student(args.student, args.data, manifest, teacher, found, labels, whiten, centre)


def diagnose_student(path, data, manifest, teacher, found, labels, whiten, centre) -> None:
    from teacher_baseline import student_outputs  # a sibling in examples/

    from edgenode.data import load_split_arrays

    num_classes = len(manifest.classes)
    train_unit = unit(teacher.lookup(manifest.files("train"))[0][found] - centre)
    for split in ("val", "test"):
        features, logits = student_outputs(path, load_split_arrays(manifest, data, split)[0])
        student = unit(features)
        truth = np.asarray(manifest.labels(split))
        right = logits.argmax(axis=1) == truth
        vectors, has = teacher.lookup(manifest.files(split))
        print(f"{path} {split}: its own head {right.mean():.3f}")
        for name, transform in (("as stored", np.eye(len(whiten))), ("whitened", whiten)):
            target = unit(unit(vectors - centre) @ transform)
            mine = unit(student @ transform)
            means = class_means(train_unit @ transform, labels, num_classes)
            cosine = (target * mine).sum(axis=1)
            print(f"  {name}: its features by the teacher's class means {((mine @ means.T).argmax(1) == truth).mean():.3f}; "
                  f"cosine to the teacher {cosine[right & has].mean():.3f} where right, {cosine[~right & has].mean():.3f} "
                  f"where wrong; AUC of the cosine for right vs wrong {roc_auc(right[has], cosine[has]):.3f}")


if __name__ == "__main__":
    main()
