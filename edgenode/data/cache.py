"""Decoded split arrays on disk, so each image is decoded once per manifest rather than once per run.

A cache file is named by the manifest's sha256 and by a hash of the resolved images folder, so a changed
split or a different copy of the data can never be served someone else's pixels; and it records the size and
modification time of every file it holds, so a picture replaced in place since (or one that no longer decodes)
is read again rather than served from the cache. Files are written atomically; a damaged or mismatched cache
file is treated as a miss and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from edgenode.artifacts import atomic_path, sha256_bytes
from edgenode.data import decode
from edgenode.data.discover import images_root
from edgenode.data.manifest import DataWarning, Manifest
from edgenode.errors import ArtifactError, DataError, ImageDecodeError, UsageError

CACHE_ENV = "EDGENODE_CACHE"
CACHE_VERSION = "v2"  # v2: a JPEG over 40 MP is decoded at reduced size, no longer skipped


def cache_dir() -> Path:
    """``$EDGENODE_CACHE`` when set, else ``~/.cache/edgenode``; read at each call so tests can redirect it."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgenode"


def cache_path(manifest: Manifest, root: str | os.PathLike, split: str) -> Path:
    manifest.files(split)  # validates the split name
    return _cache_file(manifest, root, split)


def _cache_file(manifest: Manifest, root: str | os.PathLike, name: str) -> Path:
    """``<manifest>-<images folder>-<name>-<version>.npz``: pixels are never served for another split or folder.

    An aligned copy's key also covers its alignment (spec and chip size), so a copy re-made at the same path
    with other settings never gets the old chips' pixels.
    """
    from edgenode.align import read_alignment

    folder = str(images_root(root).resolve())
    alignment = read_alignment(root)
    if alignment is not None:
        folder += f"\0{alignment[0].method}\0{alignment[0].padding!r}\0{alignment[1]}"
    folder_key = sha256_bytes(folder.encode("utf-8"))[:12]
    return cache_dir() / f"{manifest.sha256[:16]}-{folder_key}-{name}-{CACHE_VERSION}.npz"


def _labels(manifest: Manifest, split: str) -> np.ndarray:
    return np.asarray(manifest.labels(split), dtype=np.int64).reshape(-1)


def files_fingerprint(root: str | os.PathLike, files) -> str:
    """A hash of each file's size and modification time (in nanoseconds): a picture replaced since changes it.

    A stat per file (0.17 s for the 9,030 files of the Pins split on this project's machine), no reading. A copy
    of the data set that keeps the times (``cp -p``, ``tar``) keeps it; one that does not costs one decode of each
    split, never wrong pixels."""
    base = images_root(root)
    digest = hashlib.sha256()
    for relpath in files:
        try:
            info = os.stat(base / relpath)
            digest.update(f"{relpath}\t{info.st_size}\t{info.st_mtime_ns}\n".encode("utf-8"))
        except OSError:
            digest.update(f"{relpath}\tmissing\n".encode("utf-8"))
    return digest.hexdigest()[:32]


def store_split_arrays(manifest: Manifest, root: str | os.PathLike, split: str, images: np.ndarray,
                       fingerprint: str | None = None) -> Path | None:
    """Write one split's uint8 NHWC images; a cache that cannot be written costs time, so it only warns.

    ``fingerprint``: :func:`files_fingerprint` of the split's files taken before they were decoded (a file
    replaced during the decode then misses next time); None takes it now."""
    path = cache_path(manifest, root, split)
    fingerprint = fingerprint or files_fingerprint(root, manifest.files(split))
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=np.ascontiguousarray(images, dtype=np.uint8), labels=_labels(manifest, split),
                     fingerprint=np.asarray(fingerprint))
    except OSError as exc:
        warnings.warn(f"could not write the image cache {path} ({exc}); images will be decoded again next time",
                      DataWarning, stacklevel=2)
        return None
    return path


def _read(path: Path, manifest: Manifest, split: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable, does not match the manifest, or holds
    pictures whose files have changed since (``fingerprint``: :func:`files_fingerprint` of them now)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["fingerprint"]) != fingerprint:  # a cache written before fingerprints: a miss too
                return None
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    size = manifest.config.image_size
    expected = _labels(manifest, split)
    if images.dtype != np.uint8 or images.shape != (len(expected), size, size, 3):
        return None
    if labels.dtype != np.int64 or not np.array_equal(labels, expected):
        return None
    return images, labels


def _decode_split(manifest: Manifest, root: str | os.PathLike, split: str, workers: int | None) -> np.ndarray:
    base = images_root(root)
    files = manifest.files(split)
    size = manifest.config.image_size
    results = decode.decode_many([base / f for f in files], size, workers)
    failed = [(f, r.reason) for f, r in zip(files, results) if isinstance(r, ImageDecodeError)]
    only_missing = bool(failed) and all(reason == "file not found" for _, reason in failed)
    if only_missing and len(failed) == len(files):
        raise DataError(f"{base} holds none of the manifest's {len(files)} {split} files (e.g. {files[0]!r}): it is "
                        "not the data folder this manifest was built from",
                        "pass the data folder the manifest (and the model) were made from")
    if only_missing:
        raise DataError(f"{len(failed)} of the manifest's {len(files)} {split} files are not in {base} (e.g. "
                        f"{failed[0][0]!r})", "pass the data folder the manifest (and the model) were made from; if it "
                        "is that folder, its files were moved or deleted: restore them")
    if failed:
        listing = "; ".join(f"{f!r}: {reason}" for f, reason in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise DataError(
            f"{len(failed)} {split} file(s) listed in the manifest can no longer be decoded from {base}: "
            f"{listing}{more}",
            "the data changed since the manifest was written; restore the files or rebuild the manifest",
        )
    if not results:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack(results)


def load_split_arrays(
    manifest: Manifest, root: str | os.PathLike, split: str, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One split as (uint8 images N x H x W x 3, int64 labels N), from the cache or decoded and cached."""
    path = cache_path(manifest, root, split)
    fingerprint = files_fingerprint(root, manifest.files(split))
    cached = _read(path, manifest, split, fingerprint)
    if cached is not None:
        return cached
    images = _decode_split(manifest, root, split, workers)
    store_split_arrays(manifest, root, split, images, fingerprint)
    return images, _labels(manifest, split)



def load_file_arrays(
    manifest: Manifest, root: str | os.PathLike, entries: list[tuple[str, int]], name: str, workers: int | None = None
) -> tuple[np.ndarray, list[tuple[str, int]], list[tuple[str, str]]]:
    """Images of arbitrary manifest entries (e.g. the unlabelled pool), cached under ``name`` and their list.

    Returns (uint8 images, the entries that decoded, skipped (file, reason)): unlike a split, a pool may hold
    files that never decoded during selection; those are left out rather than failing the run.
    """
    listing = sha256_bytes("\n".join(f"{f}\t{c}" for f, c in entries).encode("utf-8"))[:16]
    path = _cache_file(manifest, root, f"{name}-{listing}")
    by_file = dict(entries)
    fingerprint = files_fingerprint(root, [f for f, _ in entries])
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                unchanged = str(archive["fingerprint"]) == fingerprint  # files changed since: decoded again
                kept_files = [str(f) for f in archive["files"]]
                skipped = [tuple(str(s).split("\t", 1)) for s in archive["skipped"]]
                images = archive["images"]
            if unchanged and len(images) == len(kept_files) and all(f in by_file for f in kept_files):
                return images, [(f, by_file[f]) for f in kept_files], skipped
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    base = images_root(root)
    size = manifest.config.image_size
    results = decode.decode_many([base / f for f, _ in entries], size, workers)
    kept = [entry for r, entry in zip(results, entries) if not isinstance(r, ImageDecodeError)]
    skipped = [(f, r.reason) for r, (f, _) in zip(results, entries) if isinstance(r, ImageDecodeError)]
    arrays = [r for r in results if not isinstance(r, ImageDecodeError)]
    images = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=images, files=np.asarray([f for f, _ in kept], dtype=str),
                     skipped=np.asarray([f"{f}\t{r}" for f, r in skipped], dtype=str), fingerprint=np.asarray(fingerprint))
    except OSError as exc:
        warnings.warn(f"could not write the image cache {path} ({exc})", DataWarning, stacklevel=2)
    return images, kept, skipped


def load_scored_split(manifest: Manifest, manifest_path: str | os.PathLike, root: str | os.PathLike, split: str,
                      spec) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of ``manifest`` from ``root`` as :func:`load_split_arrays` gives it, for scoring a model whose input
    is ``spec`` (an InputSpec), after the checks every scoring command needs, cheapest first: the manifest's image
    size, the data folder, its alignment (an aligned model on plain crops answers wrongly and confidently), and a
    split that is not empty. Export, parity, bench and evaluate all load their images here."""
    from edgenode.align import check_data_alignment

    if manifest.config.image_size != spec.image_size:
        raise ArtifactError(f"{manifest_path}: images are {manifest.config.image_size} px but the model takes "
                            f"{spec.image_size} px", "pass the manifest of the run that trained the model")
    if not Path(root).is_dir():
        what = "does not exist" if not Path(root).exists() else "is not a folder"
        raise UsageError(f"--data {root} {what}", "pass the data folder the model was trained on")
    check_data_alignment(spec, root)
    images, labels = load_split_arrays(manifest, root, split)
    if len(labels) == 0:
        raise UsageError(f"the {split} split of {manifest_path} is empty", "choose a split with images (--split)")
    return images, labels
