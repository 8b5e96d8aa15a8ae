"""The split manifest: which files are train, val and test, written once and reused by every stage.

A manifest holds relative paths only, no absolute paths and no timestamps, so the same folder and the same
seed always give a byte-identical file whose sha256 names the split everywhere else (cache, checkpoints,
reports). Every file and every identity left out is listed with the reason, never dropped silently.
"""

from __future__ import annotations

import math
import os
import random
import warnings
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgenode.artifacts import atomic_write_bytes, canonical_json, describe_file, file_kind, read_json, sha256_bytes
from edgenode.data import decode
from edgenode.data.discover import discover_images, images_root
from edgenode.errors import ArtifactError, ArtifactPathError, DataError, EdgenodeError, ImageDecodeError, UsageError, is_whole_number

MANIFEST_FORMAT = "edgenode-manifest/1"
SPLITS = ("train", "val", "test")


def check_split_option(split: str) -> str:
    """``--split`` of the commands that score one split (parity, evaluate, bench): a name of :data:`SPLITS`, or a
    UsageError (exit 2) before any work."""
    if split not in SPLITS:
        raise UsageError(f"--split {split!r} is not known", f"choose one of {', '.join(SPLITS)}")
    return split


_NOT_MANIFESTS = ("checkpoint", "onnx", "image")  # kinds named in one line before the JSON parser could misread them
MAX_SKIP_WARNINGS = 20  # one line per skipped file up to this many; the manifest lists every one


class DataWarning(UserWarning):
    """Something was left out of the data set (an identity or a file); the build goes on."""


# how a message names each setting with its value, as `edgenode split` and `edgenode train` both spell it
# (``workers`` is an argument of the Python API only)
_NAMED = {"per_class": "--per-class {!r}", "image_size": "--image-size {!r}", "workers": "workers={!r}",
          **{k: f"--{k}-per-class {{!r}}" for k in ("train", "val", "test")}}


def _positive_int(name: str, value: Any) -> None:
    if not is_whole_number(value):
        raise UsageError(f"{_NAMED[name].format(value)} is not a positive integer", "pass a whole number >= 1")


@dataclass(frozen=True)
class SplitConfig:
    """How many images per identity and how they are split; the defaults are the paper's 86 = 60/17/9."""

    per_class: int = 86
    train: int = 60
    val: int = 17
    test: int = 9
    image_size: int = 64
    seed: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        for name in ("per_class", "train", "val", "test", "image_size"):
            _positive_int(name, getattr(self, name))
        if self.train + self.val + self.test > self.per_class:
            raise UsageError(
                f"train+val+test = {self.train}+{self.val}+{self.test} = {self.train + self.val + self.test} "
                f"is more than --per-class {self.per_class}",
                "raise --per-class or lower --train-per-class/--val-per-class/--test-per-class",
            )
        if not 8 <= self.image_size <= 1024:
            raise UsageError(f"--image-size {self.image_size} is out of range", "pass a size between 8 and 1024")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"seed={self.seed!r} is not an integer", "use a whole number such as 0")
        if not isinstance(self.strict, bool):
            raise UsageError(f"strict={self.strict!r} is not true/false", "use strict=True or strict=False")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SplitConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise UsageError(f"unknown split setting(s) {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
        return cls(**record)


Entry = tuple[str, int]


@dataclass
class Manifest:
    """The selected files per split (path relative to the images root, class index) and what was left out.

    ``unused`` holds files of kept identities that are in no split (a pool of unlabelled extras that may
    include files never decoded); ``excluded`` maps identity to reason; ``skipped`` lists (file, reason)
    for files that failed to decode during selection. ``mean``/``std`` are per channel, on the [0, 1]
    scale, over the train split at ``config.image_size``.
    """

    classes: list[str]
    splits: dict[str, list[Entry]]
    unused: list[Entry]
    excluded: dict[str, str]
    skipped: list[tuple[str, str]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: SplitConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "splits": {name: [[f, int(c)] for f, c in self.splits[name]] for name in SPLITS},
            "unused": [[f, int(c)] for f, c in self.unused],
            "excluded": dict(self.excluded),
            "skipped": [[f, r] for f, r in self.skipped],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.to_json().encode("utf-8"))

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        kind = file_kind(path) if Path(path).is_file() else None
        if kind in _NOT_MANIFESTS:
            raise ArtifactPathError(f"{path}: is {describe_file(path)}, not a split manifest",
                                    "pass the manifest.json of the training run")
        record = read_json(path)
        if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
            found = record.get("format") if isinstance(record, dict) else type(record).__name__
            error = ArtifactPathError if isinstance(found, str) and found.startswith("edgenode-") else ArtifactError
            raise error(f"{path}: not an edgenode split manifest (format {found!r})",
                        "pass the manifest.json written by `edgenode split` or `edgenode train`")
        try:
            return cls._from_dict(record)
        except (EdgenodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: damaged split manifest ({exc})", "rebuild it") from None

    @classmethod
    def _from_dict(cls, record: dict[str, Any]) -> Manifest:
        classes = [str(c) for c in record["classes"]]

        def entries(items) -> list[Entry]:
            out = [(str(f), int(c)) for f, c in items]
            if any(not 0 <= c < len(classes) for _, c in out):
                raise ValueError("class index out of range")
            return out

        mean, std = tuple(float(v) for v in record["mean"]), tuple(float(v) for v in record["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 channels")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"mean {mean} and std {std} must be finite, the std above 0")
        if len(set(classes)) != len(classes):
            raise ValueError(f"a class is listed twice ({next(c for c in classes if classes.count(c) > 1)!r})")
        splits = {name: entries(record["splits"][name]) for name in SPLITS}
        unused = entries(record["unused"])
        _check_each_file_once({**splits, "unused": unused})  # a hand-edited or foreign file: train and test must not share one
        return cls(
            classes=classes,
            splits=splits,
            unused=unused,
            excluded={str(k): str(v) for k, v in record["excluded"].items()},
            skipped=[(str(f), str(r)) for f, r in record["skipped"]],
            mean=mean,
            std=std,
            config=SplitConfig.from_dict(record["config"]),
        )

    def _split(self, split: str) -> list[Entry]:
        if split not in self.splits:
            raise UsageError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        return self.splits[split]

    def files(self, split: str) -> list[str]:
        return [f for f, _ in self._split(split)]

    def labels(self, split: str) -> list[int]:
        return [c for _, c in self._split(split)]


def _check_each_file_once(lists: dict[str, list[Entry]]) -> None:
    """Every file once, in one list, and inside the data set (relative, no ``..``): a file in two splits would score
    a training picture as a test one. Paths are compared in normal form, so that a hand-edited ``Person/./x.png``
    or ``Person//x.png`` is the same file as ``Person/x.png``."""
    where: dict[str, tuple[str, str]] = {}
    for name, entries in lists.items():
        for relpath, _ in entries:
            path = PurePosixPath(relpath)
            if not path.parts or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"{relpath!r} in {name} is not a path inside the data set")
            key = path.as_posix()  # PurePosixPath drops "." parts and repeated slashes
            if key in where:
                first, spelled = where[key]
                same = "" if spelled == relpath else f" (as {spelled!r})"
                raise ValueError(f"{relpath!r} is listed in {first}{same} and in {name}")
            where[key] = (name, relpath)


def channel_stats(images: np.ndarray, chunk: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images on the [0, 1] scale, rounded to 6 places.

    Sums are exact integers, taken from a 256-bin histogram of each channel built chunk by chunk: memory is one
    chunk's channel plane in ``intp`` (``chunk`` images of any size would widen to gigabytes at 1024 px).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise DataError(f"cannot compute channel statistics of an array shaped {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"channel statistics need uint8 images, got {images.dtype}")
    per_image = images.shape[1] * images.shape[2]
    step = max(1, min(chunk, (1 << 22) // per_image))  # about 4 M pixels a pass
    counts = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), step):
        block = images[start:start + step]
        for channel in range(3):
            counts[channel] += np.bincount(block[..., channel].ravel(), minlength=256)
    values = np.arange(256, dtype=np.int64)
    total = counts @ values
    squares = counts @ (values * values)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    mean01, std01 = mean / 255.0, np.sqrt(var) / 255.0
    return tuple(round(float(v), 6) for v in mean01), tuple(round(float(v), 6) for v in std01)


class _Identity:
    """Walk state for one identity: its shuffled files, how far we went, and the outcome of each file."""

    def __init__(self, name: str, files: list[str], seed: int):
        self.name = name
        self.order = list(files)
        random.Random(f"{seed}:{name}").shuffle(self.order)
        self.visited = 0
        self.outcome: dict[int, np.ndarray | ImageDecodeError] = {}

    def good(self) -> int:
        return sum(1 for r in self.outcome.values() if not isinstance(r, ImageDecodeError))


def _select(base: Path, walks: list[_Identity], config: SplitConfig, workers: int, bar: Progress) -> None:
    """Decode, in shuffled order, just enough files per identity to find ``per_class`` good ones.

    Work goes out in waves: first ``per_class`` files of every identity, then as many more as failed.
    The files visited are therefore exactly those a one-by-one walk would visit, whatever the threads do.
    """
    task = bar.add_task("Decoding images", total=0)
    total = 0
    with decode.thread_pool(workers) as pool:
        wanted = {walk: config.per_class for walk in walks}
        while wanted:
            futures = {}
            for walk, count in wanted.items():
                stop = min(walk.visited + count, len(walk.order))
                for position in range(walk.visited, stop):
                    path = base / walk.order[position]
                    futures[pool.submit(decode.or_error, decode.load_resized, path, config.image_size)] = (walk, position)
                walk.visited = stop
            total += len(futures)
            bar.update(task, total=total)
            for future in as_completed(futures):
                walk, position = futures[future]
                walk.outcome[position] = future.result()
                bar.advance(task)
            wanted = {}
            for walk in walks:
                missing = config.per_class - walk.good()
                if missing > 0 and walk.visited < len(walk.order):
                    wanted[walk] = missing


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def build_manifest(
    root: str | os.PathLike,
    config: SplitConfig = SplitConfig(),
    progress: bool = True,
    workers: int | None = None,
) -> Manifest:
    """Select ``per_class`` decodable images per identity and split them train/val/test, reproducibly.

    Each identity's files are shuffled by ``random.Random(f"{seed}:{identity}")``, so adding or removing one
    identity never changes another's split. The decoded arrays are written to the cache on the way, so the
    first training run reads them instead of decoding every file again.
    """
    if workers is not None:
        _positive_int("workers", workers)
    base = images_root(root)
    found = discover_images(root)
    walks = [_Identity(name, files, config.seed) for name, files in found.items()]
    with _progress(progress) as bar:
        _select(base, walks, config, workers or decode.default_workers(), bar)

    excluded: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[_Identity, list[int]]] = []
    counts = []  # decodable images per identity: the hint says what --per-class the data could take
    for walk in walks:
        positions = sorted(walk.outcome)
        for p in positions:
            if isinstance(walk.outcome[p], ImageDecodeError):
                skipped.append((walk.order[p], walk.outcome[p].reason))
        good = [p for p in positions if not isinstance(walk.outcome[p], ImageDecodeError)]
        counts.append(len(good))
        if len(good) < config.per_class:
            excluded[walk.name] = (
                "no image files" if not walk.order
                else f"only {len(good)} decodable images, {config.per_class} needed"
            )
        else:
            kept.append((walk, good))
    _report_excluded(excluded, config)
    _report_skipped(base, skipped)
    if len(kept) < 2:
        fits = sorted(counts, reverse=True)[1] if len(counts) >= 2 else 0  # the most that two identities both have
        raise DataError(
            f"only {len(kept)} identit{'y' if len(kept) == 1 else 'ies'} in {base} "
            f"with {config.per_class} decodable images; at least 2 are needed",
            (f"lower --per-class to {fits} or less, with train/val/test counts per identity that fit in it, or add images"
             if fits >= 3 else "add images: each identity needs at least 3 (one per split)"),
        )

    splits, arrays, unused = _assign(kept, config)
    stacked = {name: np.stack(arrays[name]) for name in SPLITS}
    mean, std = channel_stats(stacked["train"])
    if min(std) <= 0.0:
        raise DataError(f"train images of {base} have no variation in some channel (std {std})",
                        "check that the images are real pictures")
    manifest = Manifest(
        classes=[walk.name for walk, _ in kept],
        splits=splits,
        unused=unused,
        excluded=excluded,
        skipped=sorted(skipped),
        mean=mean,
        std=std,
        config=config,
    )
    from edgenode.data.cache import store_split_arrays  # cache imports this module for its types

    for name in SPLITS:
        store_split_arrays(manifest, root, name, stacked[name])
    return manifest


def _assign(kept: list[tuple[_Identity, list[int]]], config: SplitConfig):
    """Selected images in shuffled order: the first ``train`` to train, then val, then test, rest unused.

    Within a split, entries are grouped by class and sorted by path so the manifest reads easily.
    """
    stops = np.cumsum([0, config.train, config.val, config.test])
    splits: dict[str, list[Entry]] = {name: [] for name in SPLITS}
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    unused: list[Entry] = []
    for label, (walk, good) in enumerate(kept):
        for name, lo, hi in zip(SPLITS, stops[:-1], stops[1:]):
            chosen = sorted(good[lo:hi], key=lambda p: walk.order[p])
            splits[name].extend((walk.order[p], label) for p in chosen)
            arrays[name].extend(walk.outcome[p] for p in chosen)
        leftover = good[stops[-1]:] + list(range(walk.visited, len(walk.order)))
        unused.extend(sorted((walk.order[p], label) for p in leftover))
    return splits, arrays, unused


def _report_skipped(base: Path, skipped: list[tuple[str, str]]) -> None:
    """One warning line per file that could not be decoded (the manifest's ``skipped`` lists them all)."""
    warn_skipped([(base / relpath, reason) for relpath, reason in sorted(skipped)],
                 f"undecodable file(s) in {base}; the manifest's 'skipped' list names every one with its reason", stacklevel=4)


def warn_skipped(skipped: Sequence[tuple[str | Path, str]], more: str, stacklevel: int = 3) -> None:
    """``skipped PATH: REASON``, one :class:`DataWarning` per file that a data-set pass (split, teacher, align) left
    out, up to :data:`MAX_SKIP_WARNINGS`; then ``skipped N more <more>`` for the rest. ``stacklevel`` is
    ``warnings.warn``'s, counted from here: 3 names the caller's caller."""
    for path, reason in skipped[:MAX_SKIP_WARNINGS]:
        warnings.warn(f"skipped {path}: {reason}", DataWarning, stacklevel=stacklevel)
    if len(skipped) > MAX_SKIP_WARNINGS:
        warnings.warn(f"skipped {len(skipped) - MAX_SKIP_WARNINGS} more {more}", DataWarning, stacklevel=stacklevel)


MAX_EXCLUDED_LISTED = 5


def _report_excluded(excluded: dict[str, str], config: SplitConfig) -> None:
    if not excluded:
        return
    shown = list(excluded.items())[:MAX_EXCLUDED_LISTED]  # one line stays readable; the manifest lists them all
    listing = "; ".join(f"{name!r}: {reason}" for name, reason in shown)
    if len(excluded) > len(shown):  # a strict split writes no manifest
        listing += f"; and {len(excluded) - len(shown)} more" + ("" if config.strict else " (the manifest's 'excluded' names each)")
    if config.strict:
        raise DataError(f"{len(excluded)} identit{'y has' if len(excluded) == 1 else 'ies have'} too few "
                        f"images for --per-class {config.per_class}: {listing}",
                        "lower --per-class, add images, or drop --strict to exclude them")
    warnings.warn(f"excluded {len(excluded)} identit{'y' if len(excluded) == 1 else 'ies'} "
                  f"(fewer than {config.per_class} decodable images): {listing}", DataWarning, stacklevel=3)


def manifest_of_run(artifact: str | os.PathLike, trained_on_sha256: str,
                    manifest: str | os.PathLike | None = None) -> tuple[Path, Manifest]:
    """The split ``artifact`` was trained on: ``manifest`` (``--manifest``), else the ``manifest.json`` beside it.

    Its sha256 must be ``trained_on_sha256`` (the artifact's record): another split could put training images
    into the one that is scored, and report memorisation as accuracy. Export, parity, bench and evaluate all
    find and check it here, with the same errors.
    """
    artifact = Path(artifact)
    path = Path(manifest) if manifest else artifact.parent / "manifest.json"
    if not path.is_file():
        raise ArtifactPathError(f"{path}: split manifest not found",
                                f"pass --manifest with the manifest.json of the run that trained {artifact.name}")
    loaded = Manifest.load(path)
    if loaded.sha256 != trained_on_sha256:
        raise ArtifactError(f"{path} (sha256 {loaded.sha256[:12]}…) is not the split {artifact.name} was trained on "
                            f"({trained_on_sha256[:12]}…)", "pass --manifest with the manifest.json from the checkpoint's run folder")
    return path, loaded
