"""Time the runtime's face alignment (dlib HOG detector + 5 landmarks + chip) against decoding, per picture.

    OMP_NUM_THREADS=1 python examples/align_timing.py ../shared/data/pins runs/pins-manifest.json --n 300

A model trained on aligned chips pays this before every inference (``edgenode infer`` aligns each input);
RESULTS.md compares it with the network's own latency. One core, one picture at a time, after one warm-up call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgenode.align import FaceAligner
from edgenode.data import Manifest, images_root
from edgenode.data.decode import load_resized, load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("--n", type=int, default=300, help="test pictures to time")
    parser.add_argument("--size", type=int, default=64, help="chip side (the model's input size)")
    args = parser.parse_args()
    root = images_root(args.data)
    files = [root / f for f in Manifest.load(args.manifest).files("test")[: args.n]]
    pictures = [np.asarray(load_rgb(f)) for f in files]
    aligner = FaceAligner(args.size)
    aligner(pictures[0])

    def per_item(fn, items) -> float:
        start = time.perf_counter()
        for item in items:
            fn(item)
        return 1000 * (time.perf_counter() - start) / len(items)

    sides = [p.shape[0] for p in pictures]
    print(f"{len(files)} pictures, {min(sides)}-{max(sides)} px high: align {per_item(aligner, pictures):.2f} ms/picture; "
          f"decode {per_item(load_rgb, files):.2f} ms; decode + resize to {args.size} px "
          f"{per_item(lambda f: load_resized(f, args.size), files):.2f} ms")


if __name__ == "__main__":
    main()
