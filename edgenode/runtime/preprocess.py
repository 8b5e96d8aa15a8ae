"""Image files to model input, fast: decoding overlaps inference and batches land in pre-allocated arrays.

Each picture goes through the very functions training used (``load_resized`` then ``normalize_array``), so a
deployed model sees the same numbers as in training. Worker threads decode *and* normalise one image each
straight into its slot of a pre-allocated float32 batch (Pillow and numpy release the GIL), while the
caller runs inference on the previous batch; ``prefetch`` batches are in flight at any time.

A file that cannot be decoded never stops the stream: its slot is reported as an :class:`ImageDecodeError`
and the good images of the batch are packed together for the model.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from edgenode.checkpoint import InputSpec
from edgenode.data import IMAGE_EXTENSIONS, load_resized, load_rgb, normalize_array
from edgenode.data.decode import default_workers
from edgenode.errors import ImageDecodeError


# pictures a folder search leaves out (training reads IMAGE_EXTENSIONS only), which infer then mentions
OTHER_PICTURE_EXTENSIONS = frozenset({".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif", ".jp2", ".ppm", ".pgm"})


def collect_images(paths: Iterable[str | os.PathLike], passed_over: list[Path] | None = None) -> list[Path]:
    """Files as given (whatever their name; decoding decides) and image files below folders, recursively; pictures
    of other formats below the folders (``.bmp``, ``.tif``…) are appended to ``passed_over`` when given, for the
    caller to say so.

    Folders are walked in sorted order, hidden entries skipped, symlinked folders followed at any depth (each real
    folder once, so a link to a parent does not loop; `train` follows identity folders that are links); a missing
    path stays in the list so that it is reported as a failure in its place rather than vanishing.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            walked: set[str] = set()
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in walked:
                    dirnames[:] = []
                    continue
                walked.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                        found.append(Path(dirpath, name))
                    elif passed_over is not None and os.path.splitext(name)[1].lower() in OTHER_PICTURE_EXTENSIONS:
                        passed_over.append(Path(dirpath, name))
        else:
            found.append(path)
    return found


def preprocess_image(image, spec: InputSpec, pre_aligned: bool = False) -> np.ndarray:
    """One picture (a path, or a uint8 HxWx3 array) to float32 (3, S, S) normalised as in training.

    For a model trained on aligned faces (``spec.align``) the picture is aligned first, by the same transform its
    training copy was made with (``edgenode.align``), unless the caller says it already is (``pre_aligned``).
    """
    return preprocess_with_face(image, spec, pre_aligned)[0]


def preprocess_with_face(image, spec: InputSpec, pre_aligned: bool = False) -> tuple[np.ndarray, bool | None]:
    """:func:`preprocess_image`, and whether the aligner found a face: None where nothing was aligned here.

    Where no face is found the chip is cut around the whole picture, as training's copy was; the model still
    answers, and those are the pictures it gets wrong most often, so the caller is told.
    """
    align = spec.align is not None and not pre_aligned
    if isinstance(image, (str, os.PathLike)):
        if not align:
            return normalize_array(load_resized(image, spec.image_size), spec.mean, spec.std)[0], None
        image = load_rgb(image)  # aligned below, as a picture given in memory is
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected a path or a uint8 (H, W, 3) array, got {pixels.dtype} {pixels.shape}")
    face_found = None
    if align:
        from edgenode.align import thread_aligner

        pixels, face_found = thread_aligner(spec.image_size, spec.align)(pixels)
        face_found = bool(face_found)
    if pixels.shape[:2] != (spec.image_size, spec.image_size):
        from PIL import Image

        resized = Image.fromarray(pixels, "RGB").resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.uint8)
    return normalize_array(pixels, spec.mean, spec.std)[0], face_found


@dataclass
class Batch:
    """One batch of files: ``x`` holds the decodable ones (in order), ``errors`` the others by position.

    ``x`` may be a view of a reused buffer: it is valid until the next batch is requested.
    """

    paths: list[Path]
    x: np.ndarray  # float32 (n_ok, 3, S, S)
    ok: list[int]  # positions in ``paths`` of the rows of ``x``
    errors: dict[int, ImageDecodeError]
    face_found: dict[int, bool | None]  # by position in ``paths``, for the decoded ones (None: nothing aligned)


class BatchLoader:
    """Iterate :class:`Batch` es over ``paths``, decoding ``prefetch`` batches ahead in a thread pool."""

    def __init__(self, paths: Sequence[str | os.PathLike], spec: InputSpec, batch_size: int = 32,
                 workers: int | None = None, prefetch: int = 2, pre_aligned: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.paths = [Path(p) for p in paths]
        self.spec = spec
        self.pre_aligned = pre_aligned
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.prefetch = max(1, prefetch)
        size = spec.image_size
        ring = min(self.prefetch + 1, max(1, -(-len(self.paths) // batch_size)))
        # pre-allocated: one float32 batch per in-flight slot, reused round-robin
        self._buffers = [np.empty((batch_size, 3, size, size), dtype=np.float32) for _ in range(ring)]

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def _fill(self, buffer: np.ndarray, slot: int, path: Path) -> ImageDecodeError | bool | None:
        """Preprocess into the buffer's slot: the error, or whether a face was found (None: nothing aligned)."""
        try:
            buffer[slot], face_found = preprocess_with_face(path, self.spec, self.pre_aligned)
        except ImageDecodeError as exc:
            return exc
        return face_found

    def _submit(self, pool: ThreadPoolExecutor, index: int) -> tuple[int, list[Future]]:
        buffer = self._buffers[index % len(self._buffers)]
        chunk = self.paths[index * self.batch_size : (index + 1) * self.batch_size]
        return index, [pool.submit(self._fill, buffer, slot, path) for slot, path in enumerate(chunk)]

    def __iter__(self) -> Iterator[Batch]:
        n_batches = len(self)
        if n_batches == 0:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending: deque[tuple[int, list[Future]]] = deque()
            next_index = 0
            while next_index < min(self.prefetch, n_batches):
                pending.append(self._submit(pool, next_index))
                next_index += 1
            while pending:
                index, futures = pending.popleft()
                results = [f.result() for f in futures]
                # the ring has prefetch+1 buffers: the one about to be refilled is never the one being yielded
                if next_index < n_batches:
                    pending.append(self._submit(pool, next_index))
                    next_index += 1
                chunk = self.paths[index * self.batch_size : (index + 1) * self.batch_size]
                buffer = self._buffers[index % len(self._buffers)]
                errors = {i: r for i, r in enumerate(results) if isinstance(r, ImageDecodeError)}
                ok = [i for i in range(len(results)) if i not in errors]
                x = buffer[: len(chunk)] if len(ok) == len(chunk) else buffer[ok]
                yield Batch(chunk, x, ok, errors, {i: results[i] for i in ok})
