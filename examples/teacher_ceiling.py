"""How much of the teacher's accuracy survives the student's input: 64x64 pixels, and no face alignment.

    python examples/teacher_ceiling.py ../shared/data/pins runs/pins-manifest.json --out runs/teacher-ceiling.json
    python examples/teacher_ceiling.py ../shared/data/pins runs/pins-manifest.json --aligned runs/pins-aligned64 --out …

The distilled student sees a 64x64 bilinear resize of each (unaligned) crop; the teacher (dlib's ResNet) sees
the original crop, finds the face and 5 landmarks, and describes an aligned 150x150 chip. This script asks the
teacher itself to work under the student's constraints, on the train and test splits:

  original-aligned    the original crop, detection + landmarks + aligned chip (how teacher_dlib128.npz is made)
  64px-aligned        the student's 64x64 input, upsampled by dlib's chip extraction, detection + landmarks
  original-unaligned  the original crop resized to a 150x150 "chip" as it is: no detection, no landmarks
  64px-unaligned      the student's 64x64 input resized to 150x150: what a student could see at best
  64px-chip           with --aligned (a copy written by `edgenode align`): its 64x64 chip, resized to 150x150 —
                      exactly what a student trained on that copy sees

For each, the nearest-class-mean accuracy on test with class means fitted on that variant's own train
descriptors (the ceiling of a student that learns this teacher on those inputs) and with the original teacher's
class means (how far the variant's descriptors move from the targets the student is distilled to). It is a
bound, not a proof: a student is not limited to what dlib's network extracts from the same pixels.
Needs the teacher extra (``pip install -e ".[teacher]"``); ~40 ms per image and variant on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

VARIANTS = ("original-aligned", "64px-aligned", "original-unaligned", "64px-unaligned")
_STATE = {}


def _init() -> None:
    import dlib

    from edgenode.teacher import model_files

    predictor, recognizer = (str(p) for p in model_files())
    _STATE.update(dlib=dlib, detector=dlib.get_frontal_face_detector(), predictor=dlib.shape_predictor(predictor),
                  recognizer=dlib.face_recognition_model_v1(recognizer))


def _aligned(img: np.ndarray, upsample: int) -> tuple[np.ndarray, bool]:
    """As edgenode.teacher describes an image: largest detection (or the whole picture), 5 landmarks, chip."""
    from edgenode.teacher import face_landmarks

    shape, found = face_landmarks(_STATE["dlib"], _STATE["detector"], _STATE["predictor"], img, upsample)
    return np.asarray(_STATE["recognizer"].compute_face_descriptor(img, shape, 1), np.float32), found


def _unaligned(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    chip = np.asarray(Image.fromarray(img).resize((150, 150), Image.Resampling.BILINEAR), dtype=np.uint8)
    return np.asarray(_STATE["recognizer"].compute_face_descriptor(np.ascontiguousarray(chip)), np.float32)


def describe(job: tuple[str, str | None, bool]) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors in VARIANTS order (+ 64px-chip), face-detected flags: original, 64px) of one picture."""
    from edgenode.data.decode import load_resized, load_rgb

    path, chip_path, only_chip = job
    vectors, found = [], []
    if not only_chip:
        original = np.ascontiguousarray(np.asarray(load_rgb(path), dtype=np.uint8))
        small = np.ascontiguousarray(load_resized(path, 64))
        a, found_a = _aligned(original, 1)
        b, found_b = _aligned(small, 2)  # a 64-px face needs two pyramid upsamplings to reach the HOG window (80 px)
        vectors, found = [a, b, _unaligned(original), _unaligned(small)], [found_a, found_b]
    if chip_path is not None:
        vectors.append(_unaligned(np.asarray(load_rgb(chip_path), dtype=np.uint8)))  # already aligned: just resized
    return np.stack(vectors), np.array(found, dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="data root (images/<identity>/... or Kaggle's pins_<identity> folders)")
    parser.add_argument("manifest")
    parser.add_argument("--teacher", help="teacher .npz: cross-checks the original-aligned variant against it")
    parser.add_argument("--aligned", help="an aligned copy of DATA (`edgenode align`): adds the 64px-chip variant")
    parser.add_argument("--only-chip", action="store_true",
                        help="with --aligned and --teacher: only the 64px-chip variant, against the teacher file (~2 min)")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.only_chip and not (args.aligned and args.teacher):
        parser.error("--only-chip needs --aligned and --teacher")

    from edgenode.data import Manifest, images_root
    from edgenode.distill import class_means, unit
    from edgenode.metrics import wilson_interval
    from edgenode.process_pool import process_map
    from edgenode.teacher import load_teacher

    manifest = Manifest.load(args.manifest)
    root = images_root(args.data)
    splits = {s: (manifest.files(s), np.asarray(manifest.labels(s))) for s in ("train", "test")}
    files = splits["train"][0] + splits["test"][0]
    chips = images_root(args.aligned) if args.aligned else None
    jobs = [(str(root / f), str(chips / f) if chips else None, args.only_chip) for f in files]
    start = time.perf_counter()
    results = process_map(describe, jobs, initializer=_init, initargs=(), workers=args.workers,
                          description="teacher variants", chunksize=16)
    seconds = time.perf_counter() - start
    computed = np.stack([r[0] for r in results])  # (N, variants, 128)
    names = ([] if args.only_chip else list(VARIANTS)) + (["64px-chip"] if args.aligned else [])
    variants = {name: computed[:, i] for i, name in enumerate(names)}
    report = {"manifest": str(args.manifest), "train_images": len(splits["train"][0]), "test_images": len(files) - len(splits["train"][0]),
              "seconds": round(seconds, 1), "workers": args.workers, "variants": {}}
    if args.teacher:
        stored, found = load_teacher(args.teacher).lookup(files)
        if args.only_chip:
            variants = {"original-aligned": stored, **variants}
        else:
            report["max_abs_diff_to_teacher_file"] = float(np.abs(stored[found] - variants["original-aligned"][found]).max())
            print(f"original-aligned vs {args.teacher}: max |diff| {report['max_abs_diff_to_teacher_file']:.2e}")
    if not args.only_chip:
        detected = np.stack([r[1] for r in results])
        report["face_detected"] = {"original": float(detected[:, 0].mean()), "64px": float(detected[:, 1].mean())}
    n_train = len(splits["train"][0])
    train_labels, test_labels = splits["train"][1], splits["test"][1]
    k = len(manifest.classes)
    reference = variants["original-aligned"]
    ref_centre = reference[:n_train].mean(axis=0)
    ref_means = class_means(reference[:n_train] - ref_centre, train_labels, k)
    for name, vectors in variants.items():
        train, test = vectors[:n_train], vectors[n_train:]
        centre = train.mean(axis=0)
        own = (unit(test - centre) @ class_means(train - centre, train_labels, k).T).argmax(axis=1)
        cross = (unit(test - ref_centre) @ ref_means.T).argmax(axis=1)
        entry = {}
        for key, predicted in (("own_class_means", own), ("original_class_means", cross)):
            correct = int((predicted == test_labels).sum())
            low, high = wilson_interval(correct, len(test_labels))
            entry[key] = {"accuracy": round(correct / len(test_labels), 4), "ci95": [round(low, 4), round(high, 4)]}
        # How close this variant's descriptor is to the distillation target (the original, centred).
        cosine = (unit(vectors - ref_centre) * unit(reference - ref_centre)).sum(axis=1)
        entry["mean_cosine_to_original"] = {"train": round(float(cosine[:n_train].mean()), 4),
                                            "test": round(float(cosine[n_train:].mean()), 4)}
        report["variants"][name] = entry
        print(f"{name:20s} test NCM (own means) {entry['own_class_means']['accuracy']:.3f} "
              f"{entry['own_class_means']['ci95']}  (original means) {entry['original_class_means']['accuracy']:.3f}  "
              f"cos to original train/test {entry['mean_cosine_to_original']['train']:.3f}/"
              f"{entry['mean_cosine_to_original']['test']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(files)} images x {computed.shape[1]} computed variant(s) in {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
