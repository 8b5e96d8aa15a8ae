"""Turn any image file into an RGB picture, or say in a few words why it cannot be done.

Scraped face data sets hold every kind of file: greyscale, palette, CMYK, 16-bit, EXIF-rotated phone
pictures, truncated downloads, HTML saved as ``.jpg``. Each is either normalised to 8-bit RGB here or
refused with an :class:`ImageDecodeError` whose reason can be shown to the user; callers then skip the
file and report it, so one bad file never stops a build and is never dropped silently.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgenode.errors import ImageDecodeError

MAX_PIXELS = 40_000_000
"""Largest picture we agree to decode at full size. Face crops are tiny; anything bigger is a mistake, an attack, or a
phone's high-resolution mode (48–108 MP), which a baseline JPEG decodes at reduced size instead
(:func:`_reduced_decode`)."""

PILLOW_LIMIT = 2 * MAX_PIXELS
"""Pillow's own decompression-bomb limit while edgenode is imported: it warns above it and refuses a file's header
above twice it (160 MP), before allocating anything. 80 MP is below Pillow's default (89.5 MP), so this lowers, never
raises, the limit; it is set above MAX_PIXELS so that a phone photo of up to 80 MP, read at half size, raises no
warning. (200-MP phone modes are refused: over 160 MP.)"""

if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > PILLOW_LIMIT:
    Image.MAX_IMAGE_PIXELS = PILLOW_LIMIT


def ignore_bomb_warning() -> None:
    """Silence Pillow's decompression-bomb warning in the current warning filters (a command's, a worker's).

    :func:`load_rgb` reads an over-limit picture at reduced size or refuses it with its own reason, so Pillow's
    two lines of source (for a JPEG over ``PILLOW_LIMIT``) would only alarm. A library caller keeps its own filters.
    """
    import warnings

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


_WHITE = (255, 255, 255)
_JPEG = ("JPEG", "MPO")  # MPO: the JPEG variant many phones write


def _too_large(img: Image.Image, width: int, height: int) -> str:
    progressive = img.format in _JPEG and bool(img.info.get("progressive"))
    fix = ("save it as a baseline (not progressive) JPEG, which is read at reduced size" if progressive
           else "save it as JPEG, which is read at reduced size")
    return (f"too large: {width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit (a decompression bomb, or a "
            f"photo far larger than a face needs: downscale it first, or {fix})")


def _reduced_decode(img: Image.Image) -> bool:
    """Ask a baseline JPEG over the limit to decode at 1/2, 1/4 or 1/8 of its size, the largest under MAX_PIXELS.

    libjpeg scales while it decodes (Pillow's ``draft``), so the full-size picture is never allocated: a 48-MP phone
    photo takes 48 MB instead of 192 MB (Pillow stores RGB in 4 bytes a pixel), in half the time. A face needs far
    fewer pixels than 12 MP, and the pictures under the limit, every training picture among them, decode exactly
    as before. False where the file is no JPEG, is a progressive JPEG (libjpeg keeps all of its coefficients at full
    resolution whatever the scale: a file of under 1 KB claiming 160 MP took 1 GB) or no scale fits; the caller
    then refuses it.
    """
    if img.format not in _JPEG or img.info.get("progressive"):
        return False
    width, height = img.size
    scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= MAX_PIXELS), None)
    if scale is None:
        return False
    img.draft(None, (width // scale, height // scale))  # libjpeg's scale: the largest whose result is at least this
    return img.size[0] * img.size[1] <= MAX_PIXELS


def _short(exc: BaseException, path: str | os.PathLike) -> str:
    """The exception's message, without the file's own path (it is already named) and at most 120 chars."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = exc.strerror
    else:
        text = str(exc).replace(os.fspath(path), os.path.basename(os.fspath(path))).strip()
    text = text or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale: Pillow's convert('RGB') clips at 255, so rescale instead."""
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = values.astype(np.float64) / 257.0
    elif img.mode == "F":
        finite = values[np.isfinite(values)]
        peak = float(finite.max()) if finite.size else 0.0
        scaled = np.nan_to_num(values.astype(np.float64)) * (255.0 if peak <= 1.0 else 1.0)
    else:  # "I": 32-bit ints, in practice 8- or 16-bit data widened by the decoder
        scaled = values.astype(np.float64) / (257.0 if values.max(initial=0) > 255 else 1.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white (a neutral, photo-like backdrop)."""
    if img.mode == "RGB" and "transparency" not in img.info:  # a PNG colour key (tRNS) still goes to white
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_rgb(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return img.convert("RGB")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the pixels usable as stored."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF is metadata damage, not pixel damage
        return img
    return upright if upright is not None else img


# What a picture may be, whatever its name says: photo formats only. Pillow would otherwise open anything it knows,
# EPS included, whose loading runs Ghostscript where it is installed. (JPEG's opener also takes the MPO variant that
# many phones write.)
PICTURE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an upright RGB image, or raise ``ImageDecodeError(path, reason)``.

    A baseline JPEG over :data:`MAX_PIXELS` comes back at 1/2, 1/4 or 1/8 of its size (:func:`_reduced_decode`).
    """
    try:
        if os.stat(path).st_size == 0:
            raise ImageDecodeError(path, "empty file")
    except FileNotFoundError:
        raise ImageDecodeError(path, "file not found") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({_short(exc, path)})") from None
    try:
        with Image.open(path, formats=PICTURE_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_PIXELS and not _reduced_decode(img):
                raise ImageDecodeError(path, _too_large(img, width, height))
            img.load()  # force the full decode here, so truncated data fails inside this try
            return to_rgb(_upright(img))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"too large ({_short(exc, path)})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (format not recognised)") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ImageDecodeError(path, f"cannot read file ({_short(exc, path)})") from None
    except MemoryError:
        raise ImageDecodeError(path, "out of memory while decoding") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error... on bad data
        raise ImageDecodeError(path, f"corrupt or truncated image data ({_short(exc, path)})") from None


def load_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """``load_rgb`` then a plain size x size bilinear resize (antialiased, aspect not kept), as uint8 HWC.

    This is the same transform as torchvision's ``Resize((size, size))`` on a PIL image, so models trained
    here see the same pixels as anything pre-processed the usual way.
    """
    img = load_rgb(path)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(img, dtype=np.uint8)


def default_workers() -> int:
    """Threads for decoding: Pillow releases the GIL while decoding, so threads scale with cores."""
    return min(32, (os.cpu_count() or 1) + 2)


T = TypeVar("T")


def or_error(read: Callable[..., T], *args) -> T | ImageDecodeError:
    """``read(*args)``, or the :class:`ImageDecodeError` it raised: a pool's slot for a file to skip and report."""
    try:
        return read(*args)
    except ImageDecodeError as exc:
        return exc


@contextmanager
def thread_pool(workers: int | None = None) -> Iterator[ThreadPoolExecutor]:
    """A decoding thread pool that drops its queued work when the block fails or is interrupted.

    ``with ThreadPoolExecutor()`` waits for every queued job on the way out, so Ctrl-C during a wave of 9,000
    decodes would only take effect once all of them had run.
    """
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def decode_many(
    paths: Sequence[str | os.PathLike],
    size: int,
    workers: int | None = None,
) -> list[np.ndarray | ImageDecodeError]:
    """Decode many files in a thread pool; each slot holds the array or the error, in input order."""
    with thread_pool(workers) as pool:
        return list(pool.map(lambda path: or_error(load_resized, path, size), paths))
