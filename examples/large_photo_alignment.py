"""Align 12-MP phone-sized photos with HOG scanning at most 2,048 px (as edgenode does) and at full size (as before).

    OMP_NUM_THREADS=1 python examples/large_photo_alignment.py "../shared/data/pins/images/Adriana Lima/Adriana Lima0_0.jpg"

Two photos are made from the given face picture, upscaled to 3000x4000: a portrait (the face fills the frame) and a
scene (the face a third of the width, on a blurred background). Each is aligned to a 64-px chip in a fresh process
per detector (so that the peak memory is that picture's), timed once after decoding; the two chips are compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(face: Path, folder: Path) -> list[Path]:
    from PIL import Image, ImageFilter

    src = Image.open(face).convert("RGB")
    portrait, scene = folder / "portrait-12mp.jpg", folder / "scene-12mp.jpg"
    src.resize((3000, 4000), Image.Resampling.BICUBIC).save(portrait, quality=92)
    background = src.resize((3000, 4000), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(60))
    background.paste(src.resize((1000, 1000 * src.height // src.width), Image.Resampling.BICUBIC), (1000, 1200))
    background.save(scene, quality=92)
    return [portrait, scene]


def align_once(photo: str, detector: str, chip_out: str) -> None:
    """Child process: decode, align once with the bounded ("edgenode") or the full-size ("full") HOG scan."""
    from edgenode.align import AlignSpec, FaceAligner
    from edgenode.data.decode import load_rgb

    aligner = FaceAligner(64, AlignSpec())
    if detector == "full":
        aligner.detector = aligner.dlib.get_frontal_face_detector()  # what edgenode did before HOG_MAX_SIDE
    picture = np.asarray(load_rgb(photo), dtype=np.uint8)
    start = time.perf_counter()
    chip, found = aligner(picture)
    seconds = time.perf_counter() - start
    np.save(chip_out, chip)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(dict(seconds=seconds, found=found, peak_mib=peak)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("face", type=Path, help="a face picture to build the photos from")
    parser.add_argument("--child", nargs=3, metavar=("PHOTO", "DETECTOR", "CHIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        align_once(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for photo in make_photos(args.face, Path(tmp)):
            rows, chips = {}, {}
            for detector in ("full", "edgenode"):
                chip = Path(tmp) / f"{photo.stem}-{detector}.npy"
                out = subprocess.run([sys.executable, __file__, str(args.face), "--child", str(photo), detector, str(chip)],
                                     check=True, capture_output=True, text=True).stdout
                rows[detector], chips[detector] = json.loads(out.strip().splitlines()[-1]), np.load(chip).astype(int)
            diff = np.abs(chips["full"] - chips["edgenode"])
            print(f"{photo.stem}: HOG at full size {rows['full']['seconds']:.2f} s, peak {rows['full']['peak_mib']:.0f} MiB; "
                  f"at most 2,048 px {rows['edgenode']['seconds']:.2f} s, peak {rows['edgenode']['peak_mib']:.0f} MiB; "
                  f"face found {rows['full']['found']} / {rows['edgenode']['found']}; chips differ by {diff.mean():.2f} "
                  f"grey levels on average, {int((diff.max(axis=2) > 30).sum())} of 4,096 pixels by more than 30")


if __name__ == "__main__":
    main()
