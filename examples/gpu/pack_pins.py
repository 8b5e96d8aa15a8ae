"""Pack what a remote GPU run needs into one small folder (the device machine gets ≤ 64 MiB and no ../shared).

    python examples/gpu/pack_pins.py ../shared/data/pins runs/pins-manifest.json carry/pins64
    python examples/gpu/pack_pins.py runs/pins-aligned64 runs/pins-manifest.json carry/pins64a --source ../shared/data/pins \
        --kd-targets runs/cpu-ens/ensemble-targets.npz      # optional: for the ens-kd recipes
    python examples/gpu/pack_pins.py runs/pins-aligned64c runs/pins-manifest.json carry/pins64c --source ../shared/data/pins \
        --teacher runs/teacher-cnn/teacher_dlib128_cnn.npz  # chips and descriptors with the CNN fallback detector

Writes ``<out>/images/<identity>/<file>`` — every train/val/test/unused image of the manifest, already resized
to the manifest's input size (so decoding there is a no-op resize) and stored as JPEG —, ``manifest.json``
(byte-identical, so checkpoints trained there name the same split sha256), the teacher descriptors of those
files and the near-duplicate list. An aligned copy (``edgenode align``) is packed with its ``alignment.json``, so
the checkpoints trained there record the alignment; its teacher file and near-duplicate list come from
``--source``, the original data set. Real accuracy is always re-measured here on the original images (or on their
aligned copy, made from the originals).
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from edgenode import data as edata
from edgenode.data import decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--kd-targets", type=Path, help="stored class probabilities (examples/ensemble_targets.py) to "
                        "pack as kd-targets.npz, for the recipes that train with --kd-targets")
    parser.add_argument("--teacher", type=Path, help="teacher descriptors to pack (default: SOURCE/teacher_dlib128.npz); "
                        "for chips of `edgenode align --cnn-fallback`, those of `edgenode teacher --cnn-fallback`")
    parser.add_argument("--source", type=Path, help="folder with teacher_dlib128.npz and near_duplicates.tsv "
                        "(default: DATA; pass the original data set when DATA is its aligned copy)")
    args = parser.parse_args()

    from edgenode.align import read_alignment
    from edgenode.errors import EdgenodeError
    from edgenode.teacher import check_teacher_matches_chips, load_teacher

    root = args.source or Path(args.data)
    alignment = read_alignment(args.data)
    try:  # the check `edgenode train` makes on the GPU machine, made here before anything is written
        teacher = load_teacher(args.teacher or root / "teacher_dlib128.npz")
        check_teacher_matches_chips(teacher, alignment[0] if alignment else None, str(args.data))
    except EdgenodeError as exc:
        raise SystemExit(f"error: {exc}") from None
    manifest = edata.Manifest.load(args.manifest)
    size = manifest.config.image_size
    entries: list[tuple[str, np.ndarray]] = []
    for split in ("train", "val", "test"):
        images, _ = edata.load_split_arrays(manifest, args.data, split)
        entries += list(zip(manifest.files(split), images))
    pool = [f for f, _ in manifest.unused]
    base = edata.images_root(args.data)
    for f, image in zip(pool, decode.decode_many([base / f for f in pool], size)):
        if isinstance(image, np.ndarray):
            entries.append((f, image))
    total = 0
    for f, image in entries:
        target = args.out / "images" / f
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=args.quality)
        target.write_bytes(buffer.getvalue())
        total += len(buffer.getvalue())
    shutil.copyfile(args.manifest, args.out / "manifest.json")
    from edgenode.align import ALIGN_FILE

    if (Path(args.data) / ALIGN_FILE).is_file():
        shutil.copyfile(Path(args.data) / ALIGN_FILE, args.out / ALIGN_FILE)
    wanted = {f for f, _ in entries}
    keep = np.array([str(f) in wanted for f in teacher.files])
    np.savez_compressed(args.out / "teacher.npz", files=teacher.files[keep], embedding=teacher.embedding[keep],
                        face_detected=teacher.face_detected[keep],
                        **{k: np.asarray(v) for k, v in teacher.provenance.items()})
    shutil.copyfile(root / "near_duplicates.tsv", args.out / "near_duplicates.tsv")
    if args.kd_targets:
        with np.load(args.kd_targets, allow_pickle=False) as stored:
            absent = [str(f) for f in stored["files"] if str(f) not in wanted]
        if absent:
            raise SystemExit(f"--kd-targets {args.kd_targets}: {len(absent)} of its files are not in this pack "
                             f"(e.g. {absent[0]}); write it for this manifest")
        shutil.copyfile(args.kd_targets, args.out / "kd-targets.npz")
    print(f"{len(entries)} images, {total / 2**20:.1f} MiB of JPEG (quality {args.quality}), teacher rows {int(keep.sum())}")


if __name__ == "__main__":
    main()
