"""A tiny face-like data set drawn from scratch, for tests and demos that must not need real photos.

Each identity has fixed traits (skin tone, face shape, eyes, hair, mouth, glasses, beard); each picture of it
varies in position, scale, rotation, lighting, background and noise. A small CNN learns it in a few epochs,
but not from a single pixel. The same seed gives byte-identical PNG files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgenode.errors import UsageError, is_whole_number

_FORMATS = {
    "png": ("png", "PNG", {"optimize": False, "compress_level": 1}),
    "jpg": ("jpg", "JPEG", {"quality": 92}),
    "jpeg": ("jpeg", "JPEG", {"quality": 92}),
    "webp": ("webp", "WEBP", {"lossless": True}),
}
_SKIN = [(255, 224, 196), (241, 194, 158), (224, 172, 125), (198, 134, 94), (141, 85, 54), (96, 60, 40)]
_HAIR = [(20, 16, 14), (90, 56, 30), (226, 196, 120), (170, 70, 30), (150, 150, 150), (240, 240, 235), (40, 60, 140)]
_IRIS = [(70, 40, 20), (50, 110, 190), (60, 130, 60), (110, 110, 120), (20, 20, 20)]
_HAIR_STYLES = ("bald", "cap", "long", "afro", "fringe")


@dataclass(frozen=True)
class _Traits:
    """What stays the same across all pictures of one identity (lengths are fractions of the canvas)."""

    skin: tuple[int, int, int]
    face_w: float
    face_h: float
    eye_dx: float
    eye_dy: float
    eye_r: float
    iris: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    brow_w: int
    nose_len: float
    mouth_w: float
    smile: bool
    mouth_colour: tuple[int, int, int]
    glasses: bool
    beard: bool


def _jitter(rng: np.random.Generator, colour, spread: int) -> tuple[int, int, int]:
    shifted = np.asarray(colour) + rng.integers(-spread, spread + 1, size=3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))


def _traits(rng: np.random.Generator) -> _Traits:
    return _Traits(
        skin=_jitter(rng, _SKIN[rng.integers(len(_SKIN))], 12),
        face_w=float(rng.uniform(0.22, 0.31)),
        face_h=float(rng.uniform(0.29, 0.37)),
        eye_dx=float(rng.uniform(0.08, 0.14)),
        eye_dy=float(rng.uniform(-0.09, -0.02)),
        eye_r=float(rng.uniform(0.028, 0.05)),
        iris=_jitter(rng, _IRIS[rng.integers(len(_IRIS))], 15),
        hair=_jitter(rng, _HAIR[rng.integers(len(_HAIR))], 15),
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
        brow_w=int(rng.integers(1, 5)),
        nose_len=float(rng.uniform(0.04, 0.10)),
        mouth_w=float(rng.uniform(0.06, 0.16)),
        smile=bool(rng.random() < 0.5),
        mouth_colour=_jitter(rng, (170, 60, 60), 30),
        glasses=bool(rng.random() < 0.3),
        beard=bool(rng.random() < 0.25),
    )


def _draw_face(t: _Traits, rng: np.random.Generator, canvas: int) -> Image.Image:
    """One picture on a ``canvas``-pixel square (drawn at twice the output size, then reduced)."""
    background = tuple(int(v) for v in rng.integers(0, 256, size=3))
    img = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(img)
    scale = canvas * rng.uniform(0.88, 1.12)
    cx = canvas * (0.5 + rng.uniform(-0.06, 0.06))
    cy = canvas * (0.54 + rng.uniform(-0.06, 0.06))

    def box(x: float, y: float, rx: float, ry: float) -> tuple[float, float, float, float]:
        return (cx + (x - rx) * scale, cy + (y - ry) * scale, cx + (x + rx) * scale, cy + (y + ry) * scale)

    fw, fh = t.face_w, t.face_h
    if t.hair_style == "long":
        draw.rectangle((cx - (fw + 0.05) * scale, cy - 0.1 * scale, cx + (fw + 0.05) * scale, cy + fh * 1.2 * scale),
                       fill=t.hair)
    if t.hair_style == "afro":
        draw.ellipse(box(0, -0.1, fw + 0.09, fh + 0.05), fill=t.hair)
    draw.ellipse(box(-fw, 0, 0.035, 0.06), fill=t.skin)  # ears
    draw.ellipse(box(fw, 0, 0.035, 0.06), fill=t.skin)
    draw.ellipse(box(0, 0, fw, fh), fill=t.skin)
    if t.beard:
        draw.chord(box(0, 0.02, fw, fh), 20, 160, fill=t.hair)
    if t.hair_style in ("cap", "long", "afro", "fringe"):
        draw.chord(box(0, -0.02, fw + 0.01, fh + 0.02), 185, 355, fill=t.hair)
    if t.hair_style == "fringe":
        draw.rectangle((cx - fw * 0.8 * scale, cy - fh * 0.75 * scale, cx + fw * 0.8 * scale, cy - fh * 0.45 * scale),
                       fill=t.hair)
    open_eye = rng.uniform(0.6, 1.0)
    for side in (-1, 1):
        ex, ey = side * t.eye_dx, t.eye_dy
        draw.ellipse(box(ex, ey, t.eye_r * 1.4, t.eye_r * open_eye), fill=(245, 245, 245))
        draw.ellipse(box(ex, ey, t.eye_r * 0.7, t.eye_r * 0.7 * open_eye), fill=t.iris)
        draw.ellipse(box(ex, ey, t.eye_r * 0.3, t.eye_r * 0.3 * open_eye), fill=(10, 10, 10))
        brow_y = ey - t.eye_r * 1.8
        draw.line((cx + (ex - t.eye_r * 1.5) * scale, cy + brow_y * scale,
                   cx + (ex + t.eye_r * 1.5) * scale, cy + (brow_y - side * 0.0 - 0.01) * scale),
                  fill=t.hair, width=max(1, int(t.brow_w * canvas / 64)))
        if t.glasses:
            draw.ellipse(box(ex, ey, t.eye_r * 2.0, t.eye_r * 1.7), outline=(30, 30, 30), width=max(1, canvas // 48))
    if t.glasses:
        draw.line((cx - (t.eye_dx - t.eye_r * 2) * scale, cy + t.eye_dy * scale,
                   cx + (t.eye_dx - t.eye_r * 2) * scale, cy + t.eye_dy * scale),
                  fill=(30, 30, 30), width=max(1, canvas // 48))
    nose_shade = tuple(int(v * 0.8) for v in t.skin)
    draw.line((cx, cy + 0.0 * scale, cx - 0.012 * scale, cy + t.nose_len * scale), fill=nose_shade,
              width=max(1, canvas // 40))
    mouth_y = t.nose_len + 0.07 + rng.uniform(-0.01, 0.01)
    mouth_w = t.mouth_w * rng.uniform(0.9, 1.1)
    if t.smile:
        draw.arc(box(0, mouth_y - 0.03, mouth_w, 0.04), 20, 160, fill=t.mouth_colour, width=max(1, canvas // 32))
    else:
        draw.line((cx - mouth_w * scale, cy + mouth_y * scale, cx + mouth_w * scale, cy + mouth_y * scale),
                  fill=t.mouth_colour, width=max(1, canvas // 32))
    angle = float(rng.uniform(-12.0, 12.0))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=background)


def _finish(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Reduce to ``size``, then vary lighting (overall and a left-right gradient) and add sensor noise."""
    small = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    gradient = np.linspace(-1.0, 1.0, size, dtype=np.float32)[None, :, None] * rng.uniform(-25, 25)
    lit = small * rng.uniform(0.85, 1.15) + gradient + rng.normal(0.0, 5.0, size=small.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(lit), 0, 255).astype(np.uint8), "RGB")


def _check(name: str, value, low: int) -> None:
    if not is_whole_number(value, low):
        raise UsageError(f"{name}={value!r} is not a whole number >= {low}", f"set {name} to at least {low}")


def make_synthetic_faces(
    out_dir: str | os.PathLike,
    n_classes: int = 10,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Write ``out_dir/images/Synthetic Person NN/Synthetic Person NN_KKK.<ext>`` and return ``out_dir``."""
    _check("n_classes", n_classes, 1)
    _check("per_class", per_class, 1)
    _check("size", size, 8)
    _check("seed", seed, 0)
    if image_format not in _FORMATS:
        raise UsageError(f"image_format={image_format!r} is not supported", f"use one of {', '.join(_FORMATS)}")
    ext, pil_format, options = _FORMATS[image_format]
    out_dir = Path(out_dir)
    class_digits = max(2, len(str(n_classes - 1)))
    image_digits = max(3, len(str(per_class - 1)))
    for c in range(n_classes):
        traits = _traits(np.random.default_rng([seed, c]))
        identity = f"Synthetic Person {c:0{class_digits}d}"
        folder = out_dir / "images" / identity
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rng = np.random.default_rng([seed, c, k, 1])
            picture = _finish(_draw_face(traits, rng, 2 * size), rng, size)
            picture.save(folder / f"{identity}_{k:0{image_digits}d}.{ext}", pil_format, **options)
    return out_dir
