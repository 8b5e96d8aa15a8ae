"""Write an accuracy report (report.json + predictions, worst-class and per-class-recall figures) for a checkpoint.

Usage:
    python examples/accuracy_report.py runs/pins-odenet/best.pt ../shared/data/pins --out runs/pins-odenet/report
    python examples/accuracy_report.py best.pt DATA --exclude near_duplicates.txt   # one relative path a line
    python examples/accuracy_report.py best.pt DATA --near-duplicates DATA/near_duplicates.tsv
      (also reports accuracy on the test images that have no near-duplicate of the same identity in train)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgenode.accuracy_report import accuracy_report
from edgenode.errors import EdgenodeError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="best.pt or last.pt written by `edgenode train`")
    parser.add_argument("data", type=Path, help="the data folder the model was trained on")
    parser.add_argument("--manifest", type=Path, help="split manifest (default: manifest.json beside the checkpoint)")
    parser.add_argument("--out", type=Path, help="output folder (default: accuracy-report beside the checkpoint)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--exclude", type=Path, help="text file of image paths (relative to the images root) to "
                        "also report accuracy without, e.g. test images with a near-duplicate in train")
    parser.add_argument("--near-duplicates", type=Path, help="near-duplicate pairs (tsv, as `edgenode.data.near_duplicates` "
                        "writes it): exclude the split's images that have a near-duplicate in train")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--mirror-average", action="store_true",
                        help="classify each picture with its mirror image (as `edgenode export --mirror-average` deploys it)")
    args = parser.parse_args()

    exclude = None
    if args.exclude:
        exclude = {line.strip() for line in args.exclude.read_text(encoding="utf-8").splitlines() if line.strip()}
    if args.near_duplicates and args.split == "train":
        parser.error("--near-duplicates compares the split with train: use it with --split val or test")
    try:
        if args.near_duplicates:
            from edgenode.data import Manifest
            from edgenode.data.near_duplicates import leaky_files, read_near_duplicates

            manifest = Manifest.load(args.manifest or args.checkpoint.parent / "manifest.json")
            exclude = (exclude or set()) | leaky_files(manifest, read_near_duplicates(args.near_duplicates), split=args.split)
        accuracy_report(args.checkpoint, args.data, args.manifest or args.checkpoint.parent / "manifest.json",
                        args.out or args.checkpoint.parent / "accuracy-report", split=args.split, exclude_files=exclude,
                        batch_size=args.batch_size, device=args.device, mirror_average=args.mirror_average)
    except EdgenodeError as exc:  # a user error: one line, as the CLI prints it
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
