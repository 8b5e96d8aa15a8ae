"""Near-duplicate images by difference hash (dHash), and splits and pools that do not leak through them.

Scraped face sets hold the same photo more than once: re-crops, re-edits, re-encodes, now and then under two
names. If one copy lands in train and another in test, test accuracy measures memory rather than
recognition. The Pins copy ships ``near_duplicates.tsv`` (every pair within dHash distance 4); this module
recomputes it for any data set, reads and writes that format, and turns pairs into the two questions a
training run asks: which test files leak from train (:func:`leaky_files`), and which unlabelled extras can be
trained on without ever seeing a val/test picture (:func:`clean_unlabeled_pool`).

The hash is the usual 64-bit dHash: greyscale (Pillow ``L``), resize to 9x8 (width 9, height 8), and one bit
per pixel that is brighter than its left-hand neighbour, row by row, first bit the most significant. With
``LANCZOS`` resampling this reproduces the shipped Pins ``near_duplicates.tsv`` exactly: all 430 listed
distances are equal, and the full pair search at distance <= 4 finds exactly those 430 pairs. The other
Pillow filters do not (BICUBIC gives the listed distance for 27% of the pairs, BILINEAR 20%, HAMMING 17%,
BOX 17%, NEAREST 4%), so the filter is part of the hash's definition, not a detail.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgenode.artifacts import atomic_write_bytes
from edgenode.data import decode
from edgenode.data.discover import images_root
from edgenode.data.manifest import DataWarning, Manifest
from edgenode.errors import DataError, DataPathError, ImageDecodeError, UsageError, is_whole_number

HASH_SIZE = (9, 8)
"""(width, height) of the greyscale thumbnail: 8 comparisons per row x 8 rows = 64 bits."""

RESAMPLE = Image.Resampling.LANCZOS
"""The one Pillow filter that reproduces the shipped Pins near_duplicates.tsv (see the module docstring)."""

DEFAULT_MAX_DISTANCE = 4
"""The Pins README's threshold: at <= 4 of 64 bits most same-identity pairs are re-crops of one photo."""

TSV_HEADER = ("file_a", "file_b", "hamming")
_CHUNK = 1024  # rows per block in the all-pairs search: 1024 x 16.5k uint64 = 135 MB of temporaries at most
_BYTE_POPCOUNT = np.array([v.bit_count() for v in range(256)], dtype=np.uint8)


@dataclass(frozen=True, order=True)
class NearDuplicate:
    """Two image paths (relative to the images root) whose dHashes differ in ``hamming`` bits."""

    file_a: str
    file_b: str
    hamming: int


# ---------------------------------------------------------------- hashing


def dhash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit difference hash of an RGB picture (a Pillow image or a uint8 HxWx3 / HxW array).

    A Pillow image in another mode is first made RGB the way every decode here does (transparency on
    white), so the hash of a file does not depend on how it was opened.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise UsageError(f"dhash needs a uint8 HxWx3 (or HxW) array, got {image.dtype} {image.shape}",
                             "pass the output of load_rgb or np.asarray(rgb_image)")
        image = Image.fromarray(image, "L" if image.ndim == 2 else "RGB")
    elif not isinstance(image, Image.Image):
        raise UsageError(f"dhash needs a Pillow image or a numpy array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise UsageError(f"dhash of an empty {image.width}x{image.height} image", "pass a picture with pixels")
    if image.mode != "L":
        image = decode.to_rgb(image).convert("L")
    grey = np.asarray(image.resize(HASH_SIZE, RESAMPLE), dtype=np.int16)
    brighter = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int(np.packbits(brighter).view(">u8")[0])


def compute_hashes(
    root: str | os.PathLike,
    files: Sequence[str],
    workers: int | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> np.ma.MaskedArray:
    """dHash every file (paths relative to ``images_root(root)``) in a thread pool, in input order.

    A file that cannot be decoded does not stop the run. Its slot is *masked* in the returned uint64
    masked array (no 64-bit value is free to serve as a sentinel: every one is a possible hash), its
    ``(file, reason)`` is appended to ``skipped`` when a list is given, and one :class:`DataWarning` names
    the count. :func:`find_near_duplicates` leaves masked slots out; ``np.ma.getmaskarray(h)`` lists them.
    """
    if workers is not None and not is_whole_number(workers):
        raise UsageError(f"workers={workers!r} is not a positive integer", "set workers to a whole number >= 1")
    base = images_root(root)

    def hash_of(name: str) -> int:
        return dhash(decode.load_rgb(base / name))

    with decode.thread_pool(workers) as pool:
        results = list(pool.map(lambda name: decode.or_error(hash_of, name), files))
    bad = [(name, r.reason) for name, r in zip(files, results) if isinstance(r, ImageDecodeError)]
    values = np.array([0 if isinstance(r, ImageDecodeError) else r for r in results], dtype=np.uint64)
    mask = np.array([isinstance(r, ImageDecodeError) for r in results], dtype=bool)
    if bad:
        if skipped is not None:
            skipped.extend(bad)
        shown = "; ".join(f"{name}: {reason}" for name, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"{len(bad)} of {len(files)} files in {base} could not be hashed and are left out "
                      f"of the near-duplicate search ({shown}{more})", DataWarning, stacklevel=2)
    return np.ma.MaskedArray(values, mask=mask)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64: ``np.bitwise_count`` on numpy >= 2.0, a byte lookup table on older numpy."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return _popcount_table(values)


def _popcount_table(values: np.ndarray) -> np.ndarray:
    as_bytes = np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8)
    return _BYTE_POPCOUNT[as_bytes].reshape(*values.shape, 8).sum(axis=-1, dtype=np.uint8)


def find_near_duplicates(
    files: Sequence[str],
    hashes: np.ndarray,
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> list[NearDuplicate]:
    """Every pair of files whose hashes differ in at most ``max_distance`` bits, by brute force.

    All n(n-1)/2 pairs are compared, a block of rows at a time, so nothing is missed (no bucketing
    heuristics); for the 16.5k Pins images that is 136 million XOR+popcounts, about a second. Masked
    hashes (undecodable files from :func:`compute_hashes`) are skipped. Each pair is written with
    ``file_a < file_b`` and the list is sorted by (hamming, file_a, file_b), so the output is reproducible.
    """
    if not is_whole_number(max_distance, 0) or max_distance > 64:
        raise UsageError(f"max_distance={max_distance!r} is not a whole number of bits from 0 to 64",
                         f"use the Pins threshold {DEFAULT_MAX_DISTANCE}")
    files = list(files)
    mask = np.ma.getmaskarray(hashes)
    values = np.ma.getdata(hashes)
    if values.ndim != 1 or len(values) != len(files):
        raise UsageError(f"{len(files)} files but hashes shaped {values.shape}",
                         "pass one hash per file, as compute_hashes returns them")
    if len(set(files)) != len(files):
        raise UsageError("the file list names a file twice", "pass each file once")
    if values.dtype.kind not in "ui" or (values.dtype.kind == "i" and bool((values < 0).any())):
        raise UsageError(f"hashes must be non-negative 64-bit integers, got {values.dtype}",
                         "pass the uint64 array compute_hashes returns")
    values = values.astype(np.uint64)
    keep = np.flatnonzero(~mask)
    values = values[keep]
    pairs: list[NearDuplicate] = []
    for start in range(0, len(values), _CHUNK):
        block = values[start:start + _CHUNK]
        distance = _popcount(block[:, None] ^ values[None, start:])  # only columns >= start: upper triangle
        rows, cols = np.nonzero(distance <= max_distance)
        cols_abs = cols + start
        upper = cols_abs > rows + start
        for r, c, d in zip(rows[upper] + start, cols_abs[upper], distance[rows[upper], cols[upper]]):
            a, b = sorted((files[keep[r]], files[keep[c]]))
            pairs.append(NearDuplicate(a, b, int(d)))
    pairs.sort(key=lambda p: (p.hamming, p.file_a, p.file_b))
    return pairs


# ---------------------------------------------------------------- the tsv file


def read_near_duplicates(path: str | os.PathLike) -> list[NearDuplicate]:
    """Read a ``file_a<TAB>file_b<TAB>hamming`` table (with that header), such as the Pins one.

    Anything else is refused in one line that names the file, the line and the fix, rather than giving a
    half-read list: a silently shorter list would quietly let leaks through.
    """
    path = Path(path)
    if not path.is_file():
        raise DataPathError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}",
                            "pass the near_duplicates.tsv of the data set")
    fix = ("pass the data set's own near_duplicates.tsv (tab-separated file_a, file_b, hamming, with that header), "
           "or one written by edgenode.data.near_duplicates.write_near_duplicates")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file, so not a near-duplicate table", fix) from None
    lines = text.splitlines()
    if not lines or tuple(lines[0].lstrip("\ufeff").split("\t")) != TSV_HEADER:
        found = repr(lines[0][:60]) if lines else "an empty file"
        raise DataError(f"{path}: expected the header 'file_a<TAB>file_b<TAB>hamming', found {found}", fix)
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 3:
            raise DataError(f"{path}, line {number}: {len(cells)} tab-separated columns, 3 expected", fix)
        file_a, file_b, hamming = cells
        if not file_a or not file_b:
            raise DataError(f"{path}, line {number}: empty file name", fix)
        try:
            distance = int(hamming)
        except ValueError:
            raise DataError(f"{path}, line {number}: hamming {hamming!r} is not a whole number", fix) from None
        if not 0 <= distance <= 64:
            raise DataError(f"{path}, line {number}: hamming {distance} is outside 0..64 bits", fix)
        pairs.append(NearDuplicate(file_a, file_b, distance))
    return pairs


def write_near_duplicates(path: str | os.PathLike, pairs: Iterable[NearDuplicate]) -> Path:
    """Write ``pairs`` in the format :func:`read_near_duplicates` reads, atomically (never half a table)."""
    rows = ["\t".join(TSV_HEADER)]
    for pair in pairs:
        for name in (pair.file_a, pair.file_b):
            if not name or any(ch in name for ch in "\t\r\n"):
                raise UsageError(f"cannot write the file name {name!r} to a tsv",
                                 "file names must be non-empty and hold no tab or line break")
        rows.append(f"{pair.file_a}\t{pair.file_b}\t{int(pair.hamming)}")
    return atomic_write_bytes(path, ("\n".join(rows) + "\n").encode("utf-8"))


# ---------------------------------------------------------------- leakage


def identity_of(file: str) -> str:
    """The identity of a relative image path: its top folder (``Zendaya/Zendaya12_3.jpg`` -> ``Zendaya``)."""
    return file.split("/", 1)[0]


def read_pairs_of(manifest: Manifest, path: str | os.PathLike, option: str = "--near-duplicates") -> list[NearDuplicate]:
    """The pairs of a table (:func:`read_near_duplicates`), refused when none of them names a file of the manifest.

    Paths are matched as written, so a table of another layout (Kaggle's ``pins_<identity>/`` folders against a
    table written for ``<identity>/``) would match nothing, and leak nothing, without a word: it finds no leak in a
    score and cleans nothing from a training pool.
    """
    pairs = read_near_duplicates(path)
    known = {f for name in manifest.splits for f in manifest.files(name)} | {f for f, _ in manifest.unused}
    if pairs and not any(p.file_a in known or p.file_b in known for p in pairs):
        raise UsageError(f"{option} {path}: none of its {len(pairs)} pairs names a file of this split "
                         f"(e.g. {pairs[0].file_a!r}), so it would find nothing",
                         "use a table with paths relative to the images folder, as in the manifest")
    return pairs


def _split_names(manifest: Manifest, names: str | Iterable[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)  # 'train' must not become 't','r','a',...
    for name in names:
        if name not in manifest.splits:
            raise UsageError(f"unknown split {name!r}", f"use one of {', '.join(manifest.splits)}")
    return names


def leaky_files(
    manifest: Manifest,
    pairs: Iterable[NearDuplicate],
    split: str = "test",
    against: str | Iterable[str] = ("train",),
    same_identity_only: bool = True,
) -> set[str]:
    """Files of ``split`` with a near-duplicate among the files of the ``against`` splits.

    Only direct pairs count (dHash closeness is not transitive, so chains through other files are not
    followed). By default only pairs within one identity count: the Pins README found almost all
    cross-identity pairs to be different people in similar close-ups, and a classifier cannot profit from
    a train picture of someone else. Pass ``same_identity_only=False`` to count every pair, as when
    looking for mislabelled copies (the README's one real case is a Selena Gomez photo filed under Zendaya).
    """
    (target_split,) = _split_names(manifest, split)
    sources = _split_names(manifest, against)
    if target_split in sources:
        raise UsageError(f"split {target_split!r} is also in against={sources}",
                         "compare a split with the other splits, e.g. split='test', against=('train',)")
    target = set(manifest.files(target_split))
    others = {f for name in sources for f in manifest.files(name)}
    leaky = set()
    for pair in pairs:
        if same_identity_only and identity_of(pair.file_a) != identity_of(pair.file_b):
            continue
        if pair.file_a in target and pair.file_b in others:
            leaky.add(pair.file_a)
        if pair.file_b in target and pair.file_a in others:
            leaky.add(pair.file_b)
    return leaky


def clean_unlabeled_pool(manifest: Manifest, pairs: Iterable[NearDuplicate]) -> list[tuple[str, int]]:
    """``manifest.unused`` without any file that is a near-duplicate of a val or test file, in manifest order.

    Here every pair counts, of any identity: the pool is trained on without labels, so a false positive
    costs one extra image out of thousands, while a missed copy of a val/test picture would put that
    picture into training and inflate every number measured on it.
    """
    held_out = set(manifest.files("val")) | set(manifest.files("test"))
    drop = set()
    for pair in pairs:
        if pair.file_a in held_out:
            drop.add(pair.file_b)
        if pair.file_b in held_out:
            drop.add(pair.file_a)
    return [entry for entry in manifest.unused if entry[0] not in drop]
