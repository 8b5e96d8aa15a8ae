"""Distillation targets from an ensemble: the mean class probabilities of trained checkpoints on every training image.

    OMP_NUM_THREADS=2 python examples/ensemble_targets.py runs/pins-aligned64 runs/pins-manifest.json \\
        runs/gpu-aligned/w5-rk4x4/best-slim.pt runs/gpu-aligned/kd-pool-w5/best-slim.pt \\
        runs/gpu-aligned/w5-rk4x4-s1/best-slim.pt --near-duplicates ../shared/data/pins/near_duplicates.tsv \\
        --out runs/ensemble-targets.npz

writes ``files``/``classes``/``log_probs`` for the train split and the unlabelled pool (the same pool
``edgenode train --unlabeled`` builds with that near-duplicate table), for ``edgenode train --kd-targets``. The
members saw these images in training, so their probabilities here are confident; on the pool they are the
ensemble's pseudo-labels. No val or test image is read.
"""

from __future__ import annotations

import argparse
import time

from edgenode.data import Manifest
from edgenode.distill import save_kd_targets
from edgenode.ensemble import load_members, training_targets
from edgenode.errors import EdgenodeError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("manifest")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--near-duplicates", help="the table that training's --near-duplicates gets (none: dHash, as there)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    manifest = Manifest.load(args.manifest)
    try:
        members = load_members(args.checkpoints, manifest, args.data)
    except EdgenodeError as exc:
        raise SystemExit(str(exc)) from None
    files, log_probs, summary = training_targets(members, manifest, args.data, args.near_duplicates, args.batch_size)
    save_kd_targets(args.out, files, manifest.classes, log_probs, args.checkpoints)
    print(f"wrote {args.out}: {summary['train']} train and {summary['pool']} pool images, {len(members)} members, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"ensemble train accuracy {summary['train_accuracy']:.4f}; mean top-1 probability train "
          f"{summary['mean_top1_probability_train']:.3f}, pool {summary['mean_top1_probability_pool']:.3f}; its pool "
          f"top-1 agrees with the pool's identity folders (not used in training) on {summary['pool_folder_agreement']:.4f}")


if __name__ == "__main__":
    main()
