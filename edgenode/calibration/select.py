"""The INT8 calibration set: a few train images per identity, chosen reproducibly, written as a manifest.

Why train only: the val split chooses the step count and the test split measures the deployed model; a
calibration set drawn from either would let the held-out images shape the quantised artifact. Why per
class: activation ranges of a face classifier differ by identity (skin tone, hair, background), so a
stratified sample covers them with a handful of images where a plain random sample can miss a person.

Each identity's images are drawn with ``random.Random(f"{seed}:{identity}")`` (the split manifest's own
scheme), so adding an identity never changes another's picks, and the same manifest and seed always give a
byte-identical calibration manifest. The manifest records the split manifest's sha256, so images can be
re-loaded later only against the very split they were chosen from.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.artifacts import canonical_json, read_json, write_json
from edgenode.errors import ArtifactError, DataError, UsageError

CALIBRATION_FORMAT = "edgenode-calibration/1"
CALIBRATION_SPLIT = "train"


@dataclass(frozen=True)
class CalibrationSet:
    """Which train images calibrate INT8 (paths relative to the images root, class indices), and why."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    per_class: int
    seed: int
    source_manifest_sha256: str
    classes: tuple[str, ...] = ()
    split: str = CALIBRATION_SPLIT

    def __len__(self) -> int:
        return len(self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "split": self.split,
            "per_class": self.per_class,
            "seed": self.seed,
            "source_manifest_sha256": self.source_manifest_sha256,
            "classes": list(self.classes),
            "files": [[f, int(c)] for f, c in zip(self.files, self.labels)],
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationSet":
        record = read_json(path)
        if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
            raise ArtifactError(f"{path}: not an edgenode calibration manifest", "re-run `edgenode export --precision int8`")
        try:
            pairs = record["files"]
            return cls(
                files=tuple(str(f) for f, _ in pairs),
                labels=tuple(int(c) for _, c in pairs),
                per_class=int(record["per_class"]),
                seed=int(record["seed"]),
                source_manifest_sha256=str(record["source_manifest_sha256"]),
                classes=tuple(record.get("classes", ())),
                split=str(record["split"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: incomplete calibration manifest ({exc})", "re-export it") from None

    def load_images(self, manifest, root: str | os.PathLike) -> np.ndarray:
        """The images as the model sees them: float32 NCHW normalised with the manifest's mean/std."""
        from edgenode import data as edata

        if manifest.sha256 != self.source_manifest_sha256:
            raise ArtifactError(
                f"calibration set was drawn from split manifest {self.source_manifest_sha256[:12]}…, "
                f"not {manifest.sha256[:12]}…",
                "pass the manifest the checkpoint was trained on, or draw a new calibration set",
            )
        images, labels = edata.load_split_arrays(manifest, root, self.split)
        index = {f: i for i, f in enumerate(manifest.files(self.split))}
        missing = [f for f in self.files if f not in index]
        if missing:
            raise ArtifactError(f"calibration file {missing[0]!r} is not in the {self.split} split of the manifest")
        positions = np.asarray([index[f] for f in self.files], dtype=np.int64)
        if not np.array_equal(labels[positions], np.asarray(self.labels, dtype=np.int64)):
            raise ArtifactError("calibration labels disagree with the split manifest", "draw a new calibration set")
        return edata.normalize_array(images[positions], manifest.mean, manifest.std)


def select_calibration_set(manifest, per_class: int = 4, seed: int = 0) -> CalibrationSet:
    """Draw ``per_class`` train images of every identity of ``manifest``, seeded, in class then file order."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise UsageError(f"calibration images per class must be a positive integer, got {per_class!r}",
                         "pass --calibration-per-class 4 (or another whole number >= 1)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"calibration seed must be an integer, got {seed!r}", "pass --calibration-seed 0")
    entries = manifest.splits[CALIBRATION_SPLIT]
    by_class: dict[int, list[str]] = {}
    for relpath, label in entries:
        by_class.setdefault(int(label), []).append(relpath)
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(manifest.classes):
        pool = sorted(by_class.get(label, []))
        if len(pool) < per_class:
            raise DataError(
                f"identity {name!r} has {len(pool)} train images, fewer than the {per_class} calibration images asked for",
                f"lower --calibration-per-class to {len(pool)} or fewer",
            )
        chosen = sorted(random.Random(f"{seed}:{name}").sample(pool, per_class))
        files.extend(chosen)
        labels.extend([label] * per_class)
    return CalibrationSet(
        files=tuple(files),
        labels=tuple(labels),
        per_class=per_class,
        seed=seed,
        source_manifest_sha256=manifest.sha256,
        classes=tuple(manifest.classes),
    )
