"""Fingerprint of training's arithmetic: six small CPU runs, their per-epoch figures and a hash of their weights.

A change that should not alter what training computes (a refactor, a speed-up) is checked by running this in the
tree before it and in the tree after it, on the same machine, and comparing the two files:

    git worktree add /tmp/before <commit before the change>
    (cd /tmp/before && OMP_NUM_THREADS=1 PYTHONPATH=. python /path/to/examples/training_fingerprint.py /tmp/before.json)
    OMP_NUM_THREADS=1 python examples/training_fingerprint.py /tmp/after.json
    cmp /tmp/before.json /tmp/after.json && echo "the same to the last bit"

The runs cover the training paths: distillation with an unlabelled pool and colour jitter, without the labels'
cross-entropy, without shifts, the labels alone, the ``odenet`` preset, and distillation without augmentation
(synthetic faces and a synthetic teacher; about a minute on one core). Only code that exists in both trees is
used, so the script runs against older commits too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgenode.checkpoint import load_checkpoint
from edgenode.data import SplitConfig, build_manifest, make_synthetic_faces
from edgenode.train import TrainConfig, train

RUNS = {
    "distill-pool-colour": dict(augment_color=0.4, label_smoothing=0.1),
    "teacher-only": dict(label_weight=0.0),
    "no-shift-colour": dict(augment_shift=0.0, augment_color=0.2),
    "labels-only": dict(teacher=None, unlabeled=False, label_smoothing=0.1),
    "odenet": dict(arch="odenet", teacher=None, unlabeled=False),
    "no-augmentation": dict(augment=False),
}


def synthetic_setup(root: Path, per_class: int = 14) -> Path:
    """A small data set laid out as examples/gpu/pack_pins.py packs one: ``root/images``, ``manifest.json`` (4
    identities, 6/2/2 of 10 selected, the rest unused for the pool), ``teacher.npz`` (descriptors clustered by
    identity) and an empty ``near_duplicates.tsv``. The GPU job's tests pack it as their tiny pack."""
    make_synthetic_faces(root, n_classes=4, per_class=per_class, size=32, seed=0)
    manifest = build_manifest(root, SplitConfig(per_class=10, train=6, val=2, test=2, image_size=32, seed=0), progress=False)
    manifest.save(root / "manifest.json")
    entries = [e for name in ("train", "val", "test") for e in manifest.splits[name]] + list(manifest.unused)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 128))
    np.savez(root / "teacher.npz", files=np.array([f for f, _ in entries]), face_detected=np.ones(len(entries), bool),
             embedding=np.stack([centres[c] + 0.2 * rng.normal(size=128) for _, c in entries]).astype(np.float32))
    (root / "near_duplicates.tsv").write_text("file_a\tfile_b\thamming\n")
    return root


def weights_sha256(path: Path) -> str:
    state = load_checkpoint(path).state_dict
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthetic_setup(tmp / "data")
        for name, overrides in RUNS.items():
            values = dict(data=str(root), out=str(tmp / "runs" / name), arch="faceode", width=8, epochs=2, batch_size=8,
                          lr=3e-3, manifest=str(root / "manifest.json"), progress=False, table_every=0,
                          teacher=str(root / "teacher.npz"), unlabeled=True, near_duplicates=str(root / "near_duplicates.tsv"),
                          augment=True)
            values.update(overrides)
            if not values["unlabeled"]:
                values["near_duplicates"] = None
            run = train(TrainConfig(**values))
            result[name] = {"history": [{k: v for k, v in row.items() if k != "seconds"} for row in run.history],
                            "weights_sha256": weights_sha256(run.last_checkpoint)}
            print(f"{name}: {result[name]['weights_sha256'][:16]}", flush=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
