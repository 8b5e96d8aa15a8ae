"""Data module: discovery, robust decoding, reproducible splits, the pixel cache, tensors, synthetic faces."""

from __future__ import annotations

import io
import random
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenode.data import (
    DataWarning,
    Manifest,
    SplitConfig,
    build_manifest,
    cache_path,
    decode,
    discover_images,
    images_root,
    load_resized,
    load_rgb,
    load_split,
    load_split_arrays,
    make_synthetic_faces,
    normalize,
    normalize_array,
)
from edgenode.errors import ArtifactError, DataError, EdgenodeError, ImageDecodeError, UsageError

SMALL = SplitConfig(per_class=10, train=6, val=2, test=2, image_size=32)


# ---------------------------------------------------------------- helpers


def _noise_image(seed: int, size=(48, 48)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb that costs nothing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    _noise_image(7, (64, 64)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _write_broken_files(folder: Path) -> list[str]:
    """One of each kind of bad file; returns their names."""
    bad = {
        "empty.jpg": b"",
        "half.jpg": _truncated_jpeg(),
        "notes.jpg": b"this is a text file, not a picture\n",
        "bomb.png": _png_claiming(20000, 20000),
        "wide.png": _png_claiming(10000, 5000),  # 50 MP: over our limit, under Pillow's hard error
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return sorted(bad)


def _all_entries(m: Manifest) -> list[tuple[str, int]]:
    return [e for split in ("train", "val", "test") for e in m.splits[split]] + list(m.unused)


# ---------------------------------------------------------------- discovery


def test_discover_direct_and_images_layouts(tmp_path):
    for base in (tmp_path / "direct", tmp_path / "nested" / "images"):
        (base / "Bob" / "holiday").mkdir(parents=True)
        (base / "Alice").mkdir(parents=True)
        (base / "Empty").mkdir()
        (base / ".hidden_identity").mkdir()
        for rel in ("Alice/b.JPG", "Alice/a.jpeg", "Alice/c.webp", "Bob/x.png", "Bob/holiday/y.jpg"):
            (base / rel).write_bytes(b"x")
        for rel in ("Alice/.a.jpg", "Alice/readme.txt", "Alice/Thumbs.db", ".hidden_identity/z.jpg"):
            (base / rel).write_bytes(b"x")
        (base / "stray.jpg").write_bytes(b"x")
    expected = {"Alice": ["Alice/a.jpeg", "Alice/b.JPG", "Alice/c.webp"],
                "Bob": ["Bob/holiday/y.jpg", "Bob/x.png"], "Empty": []}
    assert discover_images(tmp_path / "direct") == expected
    assert discover_images(tmp_path / "nested") == expected
    assert images_root(tmp_path / "nested") == tmp_path / "nested" / "images"
    assert list(discover_images(tmp_path / "direct")) == ["Alice", "Bob", "Empty"]


def test_identity_folders_beside_images_are_named_in_a_warning(tmp_path):
    """``root/images`` is the data set when it exists; identities left beside it would silently be missing."""
    import warnings

    for root in (tmp_path / "clean", tmp_path / "mixed"):
        (root / "images" / "Alice").mkdir(parents=True)
        (root / "runs").mkdir()  # holds no pictures: not an identity
        (root / "runs" / "log.txt").write_text("x")
        (root / "run1").mkdir()  # a run folder: its curves.png is a picture, beside files no identity holds
        for name in ("curves.png", "best.pt"):
            (root / "run1" / name).write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images_root(tmp_path / "clean") == tmp_path / "clean" / "images"
    (tmp_path / "mixed" / "pins_Bob").mkdir()
    (tmp_path / "mixed" / "pins_Bob" / "1.jpg").write_bytes(b"x")
    with pytest.warns(DataWarning, match=r"1 folder\(s\) of pictures only beside it are left out \(pins_Bob\)") as said:
        for _ in range(3):  # commands look the root up many times: one warning
            assert images_root(tmp_path / "mixed") == tmp_path / "mixed" / "images"
    assert len([w for w in said if issubclass(w.category, DataWarning)]) == 1


def test_discover_kaggle_prefix_is_stripped_but_paths_keep_folder(tmp_path):
    for name in ("pins_Zendaya", "pins_Adriana Lima"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name[5:]}0_1.jpg").write_bytes(b"x")
    found = discover_images(tmp_path)
    assert list(found) == ["Adriana Lima", "Zendaya"]
    assert found["Zendaya"] == ["pins_Zendaya/Zendaya0_1.jpg"]
    from edgenode.data.discover import class_name

    assert class_name("pins_") == "pins_"  # the prefix alone is a name, not an empty identity


def test_discover_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover_images(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        discover_images(tmp_path / "file.txt")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no identity folders") as info:
        discover_images(tmp_path)
    assert str(tmp_path) in str(info.value) and "<identity>" in str(info.value)
    (tmp_path / "Ann").mkdir()
    (tmp_path / "pins_Ann").mkdir()
    with pytest.raises(DataError, match="both give the identity 'Ann'"):
        discover_images(tmp_path)


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_two_names_for_one_picture_are_refused(tmp_path, link):
    """A link inside the data set made one picture two files of the split: train and test could share it."""
    import os

    (tmp_path / "Ann").mkdir()
    (tmp_path / "Ann" / "a.jpg").write_bytes(b"x")
    (tmp_path / "Ann" / "b.jpg").write_bytes(b"y")
    (os.symlink if link == "symlink" else os.link)(tmp_path / "Ann" / "a.jpg", tmp_path / "Ann" / "c.jpg")
    with pytest.raises(DataError) as info:
        discover_images(tmp_path)
    assert "'Ann/c.jpg' and 'Ann/a.jpg' are the same file" in str(info.value) and "remove the link" in str(info.value)
    (tmp_path / "Ann" / "c.jpg").unlink()
    (tmp_path / "Ann" / "d.jpg").symlink_to(tmp_path / "missing.jpg")  # dangling: decoding skips and records it
    assert discover_images(tmp_path) == {"Ann": ["Ann/a.jpg", "Ann/b.jpg", "Ann/d.jpg"]}


def test_a_file_name_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    """Such a name could be written in no manifest (a UnicodeEncodeError traceback in json)."""
    import os

    (tmp_path / "Ann").mkdir()
    with open(os.path.join(os.fsencode(tmp_path / "Ann"), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(b"x")
    with pytest.raises(DataError) as info:
        discover_images(tmp_path)
    assert "'Ann/caf\\udce9.jpg' is not UTF-8" in str(info.value) and "convmv" in str(info.value)


# ---------------------------------------------------------------- decoding


def _save(img: Image.Image, path: Path, fmt: str, **options) -> Path:
    img.save(path, fmt, **options)
    return path


def test_odd_image_kinds_decode_to_rgb(tmp_path):
    grey = _save(Image.new("L", (20, 10), 128), tmp_path / "grey.jpg", "JPEG", quality=95)
    assert load_rgb(grey).mode == "RGB"
    assert np.abs(np.asarray(load_rgb(grey)).astype(int) - 128).max() <= 2

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    palette_rgb = np.asarray(load_rgb(_save(palette, tmp_path / "pal.png", "PNG", transparency=1)))
    assert tuple(palette_rgb[0, 0]) == (255, 255, 255)  # transparent index -> white backdrop
    assert tuple(palette_rgb[0, 7]) == (255, 0, 0)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (0, 0, 255, 255)
    rgba[:, 2] = (0, 0, 0, 0)
    rgba[:, 3] = (0, 0, 0, 128)
    out = np.asarray(load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png", "PNG")))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 2]) == (255, 255, 255)
    assert 120 <= out[0, 3, 0] <= 135  # half-transparent black over white is mid grey

    keyed = np.zeros((4, 4, 3), dtype=np.uint8)
    keyed[:, :2] = (10, 20, 30)  # the colour key (tRNS): transparent, so white as in every other mode
    keyed[:, 2:] = (200, 100, 50)
    keyed_rgb = np.asarray(load_rgb(_save(Image.fromarray(keyed, "RGB"), tmp_path / "key.png", "PNG", transparency=(10, 20, 30))))
    assert tuple(keyed_rgb[0, 0]) == (255, 255, 255) and tuple(keyed_rgb[0, 3]) == (200, 100, 50)

    la = Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)]), "LA")
    assert tuple(np.asarray(load_rgb(_save(la, tmp_path / "la.png", "PNG")))[0, 0]) == (255, 255, 255)

    bilevel = _save(Image.new("1", (5, 5), 1), tmp_path / "one.png", "PNG")
    assert tuple(np.asarray(load_rgb(bilevel))[0, 0]) == (255, 255, 255)

    cmyk = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    red = np.asarray(load_rgb(cmyk)).astype(int)[8, 8]
    assert red[0] > 200 and red[1] < 50 and red[2] < 50

    webp_pixels = np.asarray(_noise_image(3, (12, 9)))
    webp = _save(Image.fromarray(webp_pixels), tmp_path / "x.webp", "WEBP", lossless=True)
    assert np.array_equal(np.asarray(load_rgb(webp)), webp_pixels)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png", "PNG")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = np.asarray(load_rgb(path))
    assert out.shape == (1, 4, 3)
    assert list(out[0, :, 0]) == [0, 4, 128, 255]  # 65535 -> 255, 32896 -> 128: scaled, not clipped
    assert np.all(out[..., 0] == out[..., 2])


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(Image.fromarray(stored), tmp_path / "phone.jpg", "JPEG", quality=95, exif=exif.tobytes())
    upright = load_rgb(path)
    assert upright.size == (20, 40)  # width and height swapped
    pixels = np.asarray(upright).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # stored left (red) is now on top
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.jpg", "empty file"), ("half.jpg", "truncated"), ("notes.jpg", "not an image"),
     ("bomb.png", "too large"), ("wide.png", "too large"), ("absent.jpg", "file not found")],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_files_raise_image_decode_error(tmp_path, monkeypatch, name, reason):
    _write_broken_files(tmp_path)
    if reason == "too large":  # refused from its header: its pixels are never decoded, so never allocated
        from PIL import ImageFile

        for cls in (Image.Image, ImageFile.ImageFile):  # a file's load is ImageFile's, not Image's
            monkeypatch.setattr(cls, "load", lambda self: pytest.fail(f"{name}'s pixels were decoded"))
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_resized(tmp_path / name, 32)
    assert info.value.path == str(tmp_path / name) and reason in info.value.reason


def _jpeg_claiming(width: int, height: int, progressive: bool = False) -> bytes:
    """A small JPEG whose frame header (SOF0, or SOF2 when progressive) is rewritten to claim width x height pixels."""
    buffer = io.BytesIO()
    _noise_image(5, (16, 16)).save(buffer, "JPEG", quality=90, progressive=progressive)
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)  # marker, length, precision, then Y and X
    return bytes(data)


def test_a_phone_photo_over_the_pixel_limit_is_read_at_half_size(tmp_path, monkeypatch):
    """A 48-MP JPEG (a phone's high-resolution mode) is decoded at half size by libjpeg instead of refused: the same
    picture, upright, in a quarter of the pixels. Four flat quadrants, stored on its side with an EXIF turn, as
    phones do."""
    from PIL import JpegImagePlugin

    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or draft(self, mode, size))
    width, height = 8000, 6000
    assert width * height > decode.MAX_PIXELS
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]  # top-left, top-right, bottom-left, -right
    stored = Image.new("RGB", (width, height))
    for i, colour in enumerate(colours):
        left, top = (i % 2) * width // 2, (i // 2) * height // 2
        stored.paste(colour, (left, top, left + width // 2, top + height // 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = _save(stored, tmp_path / "phone.jpg", "JPEG", quality=95, exif=exif.tobytes())
    del stored

    upright = load_rgb(path)
    assert drafts == [(width // 2, height // 2)]  # scaled inside the decoder, not decoded whole and shrunk after
    assert upright.size == (height // 2, width // 2)  # half of each side, width and height swapped by the EXIF turn
    pixels = np.asarray(upright).astype(int)
    quarter_w, quarter_h = upright.size[0] // 4, upright.size[1] // 4
    # turned clockwise: the stored bottom-left quadrant is now top-left, top-left is top-right, and so on
    for (x, y), colour in zip([(3, 1), (3, 3), (1, 1), (1, 3)], colours):
        assert np.abs(pixels[y * quarter_h, x * quarter_w] - colour).max() <= 4, (x, y, colour)

    small = load_resized(path, 16)
    assert small.shape == (16, 16, 3)
    assert np.abs(small[4, 12].astype(int) - colours[0]).max() <= 4 and np.abs(small[12, 4].astype(int) - colours[3]).max() <= 4


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_over_limit_pictures_that_cannot_be_read_smaller_are_refused_unread(tmp_path, monkeypatch):
    """Refused from the header alone, naming the fix: a PNG, which has no reduced decode; a progressive JPEG, which
    libjpeg decodes at full resolution whatever the scale (this file of under 1 KB would take 1 GB); a JPEG header over
    Pillow's limit (200 MP), before any scale is tried."""
    from PIL import ImageFile

    (tmp_path / "wide.png").write_bytes(_png_claiming(10000, 5000))  # 50 MP
    (tmp_path / "progressive.jpg").write_bytes(_jpeg_claiming(16000, 9990, progressive=True))  # 160 MP
    (tmp_path / "huge.jpg").write_bytes(_jpeg_claiming(20000, 10000))  # 200 MP
    assert Image.open(tmp_path / "wide.png").size == (10000, 5000)
    assert Image.open(tmp_path / "progressive.jpg").info.get("progressive")
    for cls in (Image.Image, ImageFile.ImageFile):
        monkeypatch.setattr(cls, "load", lambda self: pytest.fail("an over-limit picture's pixels were decoded"))
    with pytest.raises(ImageDecodeError, match="10000x5000 pixels is over the 40,000,000-pixel limit.*save it as JPEG"):
        load_rgb(tmp_path / "wide.png")
    with pytest.raises(ImageDecodeError, match="16000x9990 pixels is over .*save it as a baseline .not progressive. JPEG"):
        load_rgb(tmp_path / "progressive.jpg")
    with pytest.raises(ImageDecodeError, match="too large.*200000000 pixels"):
        load_rgb(tmp_path / "huge.jpg")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_jpeg_header_over_twice_the_lowered_pillow_limit_is_refused_unread(tmp_path, monkeypatch):
    """edgenode lowers Pillow's limit to 80 MP, refused above twice that: a 170-MP header, which Pillow's default
    (89.5 MP, refused above 179 MP) would let through to a reduced decode, is refused from the header alone."""
    from PIL import ImageFile

    (tmp_path / "big.jpg").write_bytes(_jpeg_claiming(17000, 10000))  # 170 MP
    for cls in (Image.Image, ImageFile.ImageFile):
        monkeypatch.setattr(cls, "load", lambda self: pytest.fail("an over-limit picture's pixels were decoded"))
    with pytest.raises(ImageDecodeError, match="too large.*170000000 pixels"):
        load_rgb(tmp_path / "big.jpg")


def test_load_resized_is_plain_bilinear_resize(tmp_path):
    path = _save(_noise_image(1, (50, 30)), tmp_path / "wide.png", "PNG")
    out = load_resized(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(out, expected)


# ---------------------------------------------------------------- split config and manifest


@pytest.mark.parametrize(
    "kwargs",
    [{"per_class": 0}, {"train": -1}, {"val": 1.5}, {"test": True}, {"train": 80, "val": 17, "test": 9},
     {"image_size": 4}, {"image_size": 2048}, {"seed": "zero"}, {"strict": 1}],
)
def test_split_config_rejects_bad_values(kwargs):
    with pytest.raises(UsageError):
        SplitConfig(**kwargs)


def test_split_config_defaults_are_the_papers():
    config = SplitConfig()
    assert config.to_dict() == {"per_class": 86, "train": 60, "val": 17, "test": 9, "image_size": 64,
                                "seed": 0, "strict": False}


def test_manifest_counts_balance_and_no_overlap(synthetic_manifest):
    m = synthetic_manifest
    assert m.classes == [f"Synthetic Person {i:02d}" for i in range(6)]
    for split, count in (("train", 16), ("val", 4), ("test", 4)):
        labels = m.labels(split)
        assert np.bincount(labels, minlength=6).tolist() == [count] * 6
        assert len(m.files(split)) == len(set(m.files(split)))
    files = [f for f, _ in _all_entries(m)]
    assert len(files) == len(set(files)) == 6 * 24  # every file in exactly one place
    assert m.unused == [] and m.excluded == {} and m.skipped == []
    for f, label in _all_entries(m):
        assert f.startswith(m.classes[label] + "/")


def test_leftover_and_unvisited_files_go_to_unused(synthetic_root):
    m = build_manifest(synthetic_root, SplitConfig(per_class=20, train=10, val=5, test=3, image_size=16),
                       progress=False)
    assert np.bincount([c for _, c in m.unused], minlength=6).tolist() == [6] * 6  # 2 leftover + 4 never visited
    for split, count in (("train", 10), ("val", 5), ("test", 3)):  # unequal, so that a swap of two splits shows
        assert np.bincount(m.labels(split), minlength=6).tolist() == [count] * 6
    files = [f for f, _ in _all_entries(m)]
    assert len(files) == len(set(files)) == 6 * 24
    held_out = set(m.files("val")) | set(m.files("test"))
    assert held_out.isdisjoint(f for f, _ in m.unused)


def test_split_is_deterministic_and_seed_dependent(synthetic_root, synthetic_manifest):
    again = build_manifest(synthetic_root, synthetic_manifest.config, progress=False, workers=1)
    assert again.to_json() == synthetic_manifest.to_json()
    assert again.sha256 == synthetic_manifest.sha256
    assert "edgenode-manifest/1" in again.to_json() and str(synthetic_root) not in again.to_json()
    other = build_manifest(synthetic_root, SplitConfig(per_class=24, train=16, val=4, test=4, seed=1),
                           progress=False)
    assert other.files("test") != synthetic_manifest.files("test")
    assert sorted(other.files("train") + other.files("val") + other.files("test")) == sorted(
        synthetic_manifest.files("train") + synthetic_manifest.files("val") + synthetic_manifest.files("test"))


def test_split_follows_the_documented_per_identity_shuffle(synthetic_root, synthetic_manifest):
    """Anyone can re-derive the split: shuffle with Random(f"{seed}:{identity}"), take train, val, test."""
    for label, name in enumerate(synthetic_manifest.classes):
        order = discover_images(synthetic_root)[name]
        random.Random(f"0:{name}").shuffle(order)
        got = {split: [f for f, c in synthetic_manifest.splits[split] if c == label] for split in ("train", "val", "test")}
        assert got == {"train": sorted(order[:16]), "val": sorted(order[16:20]), "test": sorted(order[20:24])}


def test_identities_are_split_independently(tmp_path):
    make_synthetic_faces(tmp_path / "three", n_classes=3, per_class=12, size=16)
    make_synthetic_faces(tmp_path / "four", n_classes=4, per_class=12, size=16)
    config = SplitConfig(per_class=12, train=8, val=2, test=2, image_size=16)
    three = build_manifest(tmp_path / "three", config, progress=False)
    four = build_manifest(tmp_path / "four", config, progress=False)
    for split in ("train", "val", "test"):  # adding an identity does not move anyone else's files
        assert three.splits[split] == [e for e in four.splits[split] if e[1] < 3]


def test_kaggle_layout_builds(tmp_path, synthetic_root):
    for i, name in enumerate(("Alice", "Bob")):
        source = synthetic_root / "images" / f"Synthetic Person {i:02d}"
        shutil.copytree(source, tmp_path / f"pins_{name}")
    m = build_manifest(tmp_path, SMALL, progress=False)
    assert m.classes == ["Alice", "Bob"]
    assert all(f.startswith("pins_Bob/") for f, c in m.splits["train"] if c == 1)
    images, labels = load_split_arrays(m, tmp_path, "val")
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == [0, 0, 1, 1]


def test_unicode_and_spaces_in_names(tmp_path):
    for i, name in enumerate(("Zoë Saldaña", "李 小龍", "Jake Mcdorman")):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for k in range(10):
            _noise_image(100 * i + k).save(folder / f"{name} photo {k} é.JPG", "JPEG")
    m = build_manifest(tmp_path, SMALL, progress=False)
    assert m.classes == ["Jake Mcdorman", "Zoë Saldaña", "李 小龍"]
    m.save(tmp_path / "manifest.json")
    loaded = Manifest.load(tmp_path / "manifest.json")
    assert loaded == m and loaded.sha256 == m.sha256
    assert "Zoë" in (tmp_path / "manifest.json").read_text(encoding="utf-8")
    x, y = load_split(loaded, tmp_path, "test")
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_files_are_skipped_and_reported(tmp_path):
    make_synthetic_faces(tmp_path, n_classes=3, per_class=10, size=32)
    kept_dir, short_dir = tmp_path / "images" / "Synthetic Person 01", tmp_path / "images" / "Synthetic Person 02"
    broken = {f"Synthetic Person 01/{name}" for name in _write_broken_files(kept_dir)}
    for extra in sorted(short_dir.iterdir())[:2]:
        extra.unlink()  # 8 good + 5 bad: every file is visited, then the identity is excluded
    short_broken = [f"Synthetic Person 02/{name}" for name in _write_broken_files(short_dir)]
    with pytest.warns(DataWarning, match="Synthetic Person 02"):
        m = build_manifest(tmp_path, SMALL, progress=False)

    reasons = dict(m.skipped)
    assert [f for f, _ in m.skipped if f.startswith("Synthetic Person 02/")] == short_broken
    assert reasons["Synthetic Person 02/empty.jpg"] == "empty file"
    assert "not an image" in reasons["Synthetic Person 02/notes.jpg"]
    assert "truncated" in reasons["Synthetic Person 02/half.jpg"]
    assert "too large" in reasons["Synthetic Person 02/bomb.png"]
    assert "too large" in reasons["Synthetic Person 02/wide.png"]
    assert m.excluded == {"Synthetic Person 02": "only 8 decodable images, 10 needed"}

    # identity 01 keeps its 10 good files; the bad ones met before the 10th good one are skipped, the rest unused
    order = discover_images(tmp_path)["Synthetic Person 01"]
    random.Random("0:Synthetic Person 01").shuffle(order)
    good_seen, met = 0, []
    for f in order:
        if good_seen == 10:
            break
        if f in broken:
            met.append(f)
        else:
            good_seen += 1
    assert met and sorted(met) == [f for f, _ in m.skipped if f.startswith("Synthetic Person 01/")]
    assert broken - set(met) == {f for f, _ in m.unused}
    assert m.classes == ["Synthetic Person 00", "Synthetic Person 01"]
    assert np.bincount(m.labels("train")).tolist() == [6, 6]
    assert broken.isdisjoint(f for split in ("train", "val", "test") for f in m.files(split))
    assert Manifest.load(m.save(tmp_path / "m.json")).skipped == m.skipped
    assert str(tmp_path) not in m.to_json()  # reasons name files relative to the data set only


def test_identity_with_too_few_images_is_excluded_with_warning(tmp_path):
    make_synthetic_faces(tmp_path, n_classes=3, per_class=10, size=32)
    short = tmp_path / "images" / "Short Person"
    short.mkdir()
    for k in range(5):
        _noise_image(k).save(short / f"s{k}.png")
    (short / "bad.jpg").write_bytes(b"")
    (tmp_path / "images" / "Nobody").mkdir()
    with pytest.warns(DataWarning, match="Short Person") as record:
        m = build_manifest(tmp_path, SMALL, progress=False)
    assert "Nobody" in str(record[0].message)
    assert m.excluded == {"Nobody": "no image files", "Short Person": "only 5 decodable images, 10 needed"}
    assert "Short Person" not in m.classes and len(m.classes) == 3
    assert not any(f.startswith("Short Person/") for f, _ in _all_entries(m))
    assert ("Short Person/bad.jpg", "empty file") in m.skipped

    strict = SplitConfig(**{**SMALL.to_dict(), "strict": True})
    with pytest.raises(DataError, match="Short Person") as info:
        build_manifest(tmp_path, strict, progress=False)
    assert "Nobody" in str(info.value)


def test_a_long_exclusion_list_is_one_readable_line(tmp_path):
    """Eight identities too small: the warning names five and counts the rest; the manifest names all eight."""
    make_synthetic_faces(tmp_path / "small", n_classes=8, per_class=4, size=16)
    make_synthetic_faces(tmp_path / "big", n_classes=2, per_class=10, size=16)
    for folder in (tmp_path / "big" / "images").iterdir():
        folder.rename(tmp_path / "small" / "images" / f"Big {folder.name}")
    with pytest.warns(DataWarning) as record:
        m = build_manifest(tmp_path / "small", SMALL, progress=False)
    (line,) = [str(w.message) for w in record if "excluded" in str(w.message)]
    assert line.startswith("excluded 8 identities (fewer than 10 decodable images): ")
    assert line.count("only 4 decodable images") == 5 and line.endswith("; and 3 more (the manifest's 'excluded' names each)")
    assert len(m.excluded) == 8 and len(m.classes) == 2


def test_fewer_than_two_identities_is_an_error(tmp_path):
    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="at least 2"):
            build_manifest(tmp_path, SplitConfig(per_class=11, train=6, val=2, test=2, image_size=16), progress=False)
    with pytest.raises(UsageError):
        build_manifest(tmp_path, SMALL, progress=False, workers=0)


def test_mean_std_match_numpy_over_train(synthetic_root, synthetic_manifest):
    images, _ = load_split_arrays(synthetic_manifest, synthetic_root, "train")
    scaled = images.astype(np.float64) / 255.0
    assert np.allclose(synthetic_manifest.mean, scaled.mean(axis=(0, 1, 2)), atol=1e-6, rtol=0)
    assert np.allclose(synthetic_manifest.std, scaled.std(axis=(0, 1, 2)), atol=1e-6, rtol=0)


def test_manifest_save_load_and_bad_files(tmp_path, synthetic_manifest):
    path = synthetic_manifest.save(tmp_path / "sub" / "manifest.json")
    assert path.read_text(encoding="utf-8") == synthetic_manifest.to_json()
    loaded = Manifest.load(path)
    assert loaded == synthetic_manifest and loaded.sha256 == synthetic_manifest.sha256
    assert isinstance(loaded.splits["train"][0], tuple) and isinstance(loaded.config, SplitConfig)
    with pytest.raises(ArtifactError, match="not found"):
        Manifest.load(tmp_path / "nope.json")
    (tmp_path / "other.json").write_text('{"format": "edgenode-checkpoint/1"}')
    with pytest.raises(ArtifactError, match="not an edgenode split manifest"):
        Manifest.load(tmp_path / "other.json")
    np.savez(tmp_path / "teacher.npz", embedding=np.zeros((1, 2)))  # a zip, as a checkpoint is: named as what it is
    with pytest.raises(ArtifactError, match=r"teacher\.npz: is an \.npz archive, not a split manifest"):
        Manifest.load(tmp_path / "teacher.npz")
    damaged = path.read_text(encoding="utf-8").replace('"classes": [', '"classes": [], "was": [', 1)
    (tmp_path / "damaged.json").write_text(damaged, encoding="utf-8")
    with pytest.raises(ArtifactError, match="damaged"):
        Manifest.load(tmp_path / "damaged.json")
    with pytest.raises(UsageError, match="unknown split"):
        synthetic_manifest.files("training")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["splits"]["test"].append(r["splits"]["train"][0]), "is listed in train and in test"),
    (lambda r: r["unused"].append(r["splits"]["val"][0]), "is listed in val and in unused"),
    (lambda r: r["splits"]["train"].append(["../elsewhere/x.png", 0]), "'../elsewhere/x.png' in train is not a path inside the data set"),
    (lambda r: r["splits"]["train"].append(["/abs/x.png", 0]), "'/abs/x.png' in train is not a path inside the data set"),
    (lambda r: r["classes"].append(r["classes"][0]), "is listed twice"),
    (lambda r: r.update(std=[0.2, 0.0, 0.2]), "the std above 0"),
])
def test_a_manifest_that_lists_a_file_twice_or_outside_is_refused(tmp_path, synthetic_manifest, edit, message):
    """A hand-edited or foreign --manifest was taken as it was: one picture in train and in test would have been
    scored as a test picture the model had trained on."""
    import json

    record = json.loads(synthetic_manifest.to_json())
    edit(record)
    (tmp_path / "edited.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ArtifactError) as info:
        Manifest.load(tmp_path / "edited.json")
    assert "edited.json: damaged split manifest" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("separator", ["/./", "//"])
def test_one_picture_spelled_twice_is_refused_in_train_and_test(tmp_path, synthetic_manifest, separator):
    """``Person/./x.png`` and ``Person//x.png`` are ``Person/x.png``: a hand-edited manifest listing a train picture in
    test under such a spelling would score a picture the model trained on. The error names both spellings."""
    import json

    record = json.loads(synthetic_manifest.to_json())
    original, label = record["splits"]["train"][0]
    spelled = original.replace("/", separator, 1)
    record["splits"]["test"].append([spelled, label])
    (tmp_path / "edited.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ArtifactError) as info:
        Manifest.load(tmp_path / "edited.json")
    assert f"{spelled!r} is listed in train (as {original!r}) and in test" in str(info.value)


def test_progress_bar_runs(tmp_path, capsys):
    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    build_manifest(tmp_path, SMALL, progress=True)
    assert "Decoding images" in capsys.readouterr().err


# ---------------------------------------------------------------- cache and tensors


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = decode.load_resized

    def counting(path, size):
        calls.append(str(path))
        return real(path, size)

    monkeypatch.setattr(decode, "load_resized", counting)
    return calls


def test_build_fills_cache_so_loading_decodes_nothing(synthetic_root, synthetic_manifest, monkeypatch):
    expected = load_resized(images_root(synthetic_root) / synthetic_manifest.files("val")[0], 64)

    def refuse(path, size):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(decode, "load_resized", refuse)
    for split, count in (("train", 96), ("val", 24), ("test", 24)):
        images, labels = load_split_arrays(synthetic_manifest, synthetic_root, split)
        assert images.shape == (count, 64, 64, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.tolist() == synthetic_manifest.labels(split)
    assert np.array_equal(load_split_arrays(synthetic_manifest, synthetic_root, "val")[0][0], expected)


def test_cache_miss_decodes_once_then_hits(tmp_path, synthetic_root, synthetic_manifest, monkeypatch):
    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "fresh"))
    calls = _count_decodes(monkeypatch)
    first, _ = load_split_arrays(synthetic_manifest, synthetic_root, "test")
    assert len(calls) == 24 and cache_path(synthetic_manifest, synthetic_root, "test").is_file()
    second, _ = load_split_arrays(synthetic_manifest, synthetic_root, "test")
    assert len(calls) == 24 and np.array_equal(first, second)
    assert [p.name for p in (tmp_path / "fresh").iterdir() if p.name.startswith(".")] == []  # no temp left

    cache_path(synthetic_manifest, synthetic_root, "test").write_bytes(b"garbage")  # damaged -> rebuilt
    third, _ = load_split_arrays(synthetic_manifest, synthetic_root, "test")
    assert len(calls) == 48 and np.array_equal(first, third)


def test_cache_is_keyed_by_folder(tmp_path, synthetic_root, synthetic_manifest):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_root, copy)
    here = cache_path(synthetic_manifest, synthetic_root, "train")
    there = cache_path(synthetic_manifest, copy, "train")
    assert here != there and here.name.startswith(synthetic_manifest.sha256[:16])
    assert cache_path(synthetic_manifest, synthetic_root / "images", "train") == here


def test_changed_data_is_reported(tmp_path, monkeypatch):
    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    m = build_manifest(tmp_path, SMALL, progress=False)
    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "empty-cache"))
    victim = m.files("test")[1]
    (tmp_path / "images" / victim).write_text("overwritten")
    with pytest.raises(DataError, match="changed since the manifest was written") as info:
        load_split_arrays(m, tmp_path, "test")
    assert victim in str(info.value)
    assert isinstance(info.value, EdgenodeError)


def test_a_picture_replaced_in_place_is_read_again_not_served_from_the_cache(tmp_path, monkeypatch):
    """The cache was keyed by manifest and folder only: a picture replaced since was served as it had been, and
    one overwritten with garbage was never refused once the cache was warm."""
    import os

    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    m = build_manifest(tmp_path, SMALL, progress=False)
    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "cache"))
    before, _ = load_split_arrays(m, tmp_path, "test")  # decoded and cached
    victim = tmp_path / "images" / m.files("test")[0]
    stat = victim.stat()
    Image.new("RGB", (16, 16), (0, 255, 0)).save(victim)  # another picture under the same name
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after, _ = load_split_arrays(m, tmp_path, "test")
    assert (after[0] == [0, 255, 0]).all() and not np.array_equal(before[0], after[0])
    assert np.array_equal(before[1:], after[1:])
    # either part of the fingerprint alone: the same bytes at a new time are read again (decoded once more) ...
    second = tmp_path / "images" / m.files("test")[1]
    stat = second.stat()
    os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
    calls = _count_decodes(monkeypatch)
    load_split_arrays(m, tmp_path, "test")
    assert len(calls) == len(m.files("test"))
    # ... and other bytes under the old time are seen by their size
    third = tmp_path / "images" / m.files("test")[2]
    stat = third.stat()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(third)
    os.utime(third, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old time back: only the size tells
    assert (load_split_arrays(m, tmp_path, "test")[0][2] == [0, 0, 255]).all()
    victim.write_text("overwritten")
    with pytest.raises(DataError, match="changed since the manifest was written"):
        load_split_arrays(m, tmp_path, "test")


def test_a_data_folder_that_holds_none_of_the_manifests_files_is_named_as_the_wrong_folder(tmp_path, synthetic_manifest):
    other = tmp_path / "other"
    (other / "images" / "Someone").mkdir(parents=True)
    with pytest.raises(DataError, match="holds none of the manifest's .* val files") as info:
        load_split_arrays(synthetic_manifest, other, "val")
    assert str(other) in str(info.value) and "pass the data folder the manifest" in str(info.value)
    assert "changed since" not in str(info.value)


def test_load_split_normalises_with_manifest_stats(synthetic_root, synthetic_manifest):
    x, y = load_split(synthetic_manifest, synthetic_root, "train")
    assert x.shape == (96, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_normalize_formula_and_numpy_twin():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalize(images, mean, std)
    manual = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
              - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 5, 4) and out.is_contiguous()
    assert torch.allclose(out, manual, atol=1e-6)
    assert np.array_equal(normalize_array(images, mean, std), out.numpy())
    assert normalize(images[0], mean, std).shape == (1, 3, 5, 4)
    with pytest.raises(ValueError):
        normalize(images.astype(np.float32), mean, std)


# ---------------------------------------------------------------- synthetic faces


def test_synthetic_faces_are_deterministic_with_requested_counts(tmp_path):
    a = make_synthetic_faces(tmp_path / "a", n_classes=3, per_class=5, size=32, seed=4)
    b = make_synthetic_faces(tmp_path / "b", n_classes=3, per_class=5, size=32, seed=4)
    c = make_synthetic_faces(tmp_path / "c", n_classes=3, per_class=5, size=32, seed=5)
    found = discover_images(a)
    assert list(found) == ["Synthetic Person 00", "Synthetic Person 01", "Synthetic Person 02"]
    assert all(len(files) == 5 for files in found.values())
    assert found["Synthetic Person 01"][0] == "Synthetic Person 01/Synthetic Person 01_000.png"
    for files in found.values():
        for rel in files:
            assert (a / "images" / rel).read_bytes() == (b / "images" / rel).read_bytes()
    rel = found["Synthetic Person 00"][0]
    assert (a / "images" / rel).read_bytes() != (c / "images" / rel).read_bytes()
    with Image.open(a / "images" / rel) as img:
        assert img.size == (32, 32) and img.mode == "RGB"


def test_synthetic_faces_other_formats_and_bad_arguments(tmp_path):
    root = make_synthetic_faces(tmp_path, n_classes=2, per_class=2, size=16, image_format="jpg")
    assert discover_images(root)["Synthetic Person 00"] == [
        "Synthetic Person 00/Synthetic Person 00_000.jpg", "Synthetic Person 00/Synthetic Person 00_001.jpg"]
    with pytest.raises(UsageError, match="image_format"):
        make_synthetic_faces(tmp_path, image_format="gif")
    with pytest.raises(UsageError, match="n_classes"):
        make_synthetic_faces(tmp_path, n_classes=0)


def test_synthetic_identities_are_learnable_but_not_trivial(synthetic_root, synthetic_manifest):
    """A nearest-class-mean on raw pixels beats chance (1/6), yet per-image variation keeps it off 100%."""
    train, y_train = load_split_arrays(synthetic_manifest, synthetic_root, "train")
    val, y_val = load_split_arrays(synthetic_manifest, synthetic_root, "val")
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255  # noqa: E731
    centres = np.stack([flat(train)[y_train == c].mean(axis=0) for c in range(6)])
    predicted = np.argmin(((flat(val)[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    accuracy = float((predicted == y_val).mean())
    assert accuracy > 0.4
    pixel_std = train.astype(np.float32).std(axis=0).mean()
    assert pixel_std > 30  # pictures of one data set differ a lot pixel by pixel


def test_pool_arrays_skip_undecodable_files_and_come_from_the_cache_next_time(synthetic_root, synthetic_manifest, tmp_path, monkeypatch):
    import shutil

    from edgenode.data import cache as cache_module
    from edgenode.data import load_file_arrays

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    entries = synthetic_manifest.splits["val"][:3]
    (root / "images" / entries[1][0]).write_bytes(b"not an image")
    images, kept, skipped = load_file_arrays(synthetic_manifest, root, entries, "pool")
    assert kept == [entries[0], entries[2]]
    assert [f for f, _ in skipped] == [entries[1][0]]
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8

    real_decode = cache_module.decode.decode_many
    monkeypatch.setattr(cache_module.decode, "decode_many", lambda *a, **k: pytest.fail("decoded again"))
    again, kept_again, skipped_again = load_file_arrays(synthetic_manifest, root, entries, "pool")
    np.testing.assert_array_equal(again, images)
    assert (kept_again, skipped_again) == (kept, skipped)

    # the broken file repaired in place: the pool is read again, not served from the cache
    shutil.copy(synthetic_root / "images" / entries[1][0], root / "images" / entries[1][0])
    monkeypatch.setattr(cache_module.decode, "decode_many", real_decode)
    repaired, kept_now, skipped_now = load_file_arrays(synthetic_manifest, root, entries, "pool")
    assert kept_now == entries and skipped_now == [] and repaired.shape == (3, 64, 64, 3)


def test_channel_stats_are_exact_and_need_uint8():
    """Exact integer sums (histograms), so any chunking gives the figures of one float64 pass over everything."""
    from edgenode.data.manifest import channel_stats

    images = np.random.default_rng(3).integers(0, 256, (37, 9, 7, 3), dtype=np.uint8)
    flat = images.reshape(-1, 3).astype(np.float64) / 255.0
    want = (tuple(round(v, 6) for v in flat.mean(0)), tuple(round(v, 6) for v in flat.std(0)))
    assert channel_stats(images) == channel_stats(images, chunk=5) == want
    with pytest.raises(DataError, match="need uint8 images, got float32"):
        channel_stats(images.astype(np.float32))


def test_a_decode_error_crosses_a_process_boundary_whole():
    import pickle

    from edgenode.errors import ImageDecodeError

    error = pickle.loads(pickle.dumps(ImageDecodeError("a/b.jpg", "truncated file")))
    assert (error.path, error.reason, str(error)) == ("a/b.jpg", "truncated file", "a/b.jpg: truncated file")


def test_an_interrupted_thread_pool_drops_its_queued_work():
    """Ctrl-C during a wave of decodes stops it: the jobs not yet started are cancelled, not run to the end."""
    import threading

    from edgenode.data.decode import thread_pool

    started = []
    gate = threading.Event()

    def job(i):
        started.append(i)
        gate.wait(1)

    with pytest.raises(KeyboardInterrupt):
        with thread_pool(1) as pool:
            futures = [pool.submit(job, i) for i in range(50)]
            raise KeyboardInterrupt
    gate.set()
    for future in futures[1:]:
        assert future.cancelled()
    assert started in ([], [0])


def test_only_photo_formats_are_decoded_whatever_the_name(tmp_path):
    """An EPS file named .jpg was opened as EPS (whose loading runs Ghostscript where it is installed); pictures
    are decoded as photo formats only."""
    path = tmp_path / "drawing.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_resized(path, 8)
    Image.new("RGB", (6, 4), (200, 10, 10)).save(tmp_path / "saved-as.tif", format="TIFF")
    assert load_resized(tmp_path / "saved-as.tif", 8).shape == (8, 8, 3)


def test_too_few_images_for_any_split_says_what_per_class_the_data_takes(tmp_path):
    """The demo's 40 images per identity under the paper's 86: the hint gives the --per-class that would work."""
    root = make_synthetic_faces(tmp_path / "d", n_classes=3, per_class=12, size=16, seed=0)
    for extra in sorted((root / "images" / "Synthetic Person 00").iterdir())[:4]:  # one identity has 8 images
        extra.unlink()
    with pytest.warns(DataWarning), pytest.raises(DataError, match="at least 2 are needed") as refused:
        build_manifest(root, SplitConfig(per_class=20, train=12, val=4, test=4, image_size=16), progress=False)
    assert refused.value.hint.startswith("lower --per-class to 12 or less")
    for extra in sorted((root / "images" / "Synthetic Person 01").iterdir())[:10]:  # now two of three have 8 or fewer
        extra.unlink()
    with pytest.warns(DataWarning), pytest.raises(DataError) as refused:
        build_manifest(root, SplitConfig(per_class=20, train=12, val=4, test=4, image_size=16), progress=False)
    assert refused.value.hint.startswith("lower --per-class to 8 or less")


def test_a_data_folder_missing_some_of_the_manifests_files_says_so_not_that_they_changed(tmp_path, synthetic_root, synthetic_manifest):
    """Another draw of a data set with the same identity names (the demo's, at another size) holds some of the files."""
    other = tmp_path / "other"
    shutil.copytree(synthetic_root, other)
    gone = synthetic_manifest.files("val")[:3]
    for name in gone:
        (other / "images" / name).unlink()
    with pytest.raises(DataError, match=r"3 of the manifest's \d+ val files are not in ") as info:
        load_split_arrays(synthetic_manifest, other, "val")
    assert repr(gone[0]) in str(info.value) and "pass the data folder the manifest" in str(info.value)
    assert "can no longer be decoded" not in str(info.value)


def test_a_cache_file_whose_labels_differ_is_a_miss(tmp_path, monkeypatch):
    make_synthetic_faces(tmp_path, n_classes=2, per_class=10, size=16)
    m = build_manifest(tmp_path, SMALL, progress=False)
    monkeypatch.setenv("EDGENODE_CACHE", str(tmp_path / "cache"))
    load_split_arrays(m, tmp_path, "test")
    path = cache_path(m, tmp_path, "test")
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["labels"] = (arrays["labels"] + 1) % 2
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    assert load_split_arrays(m, tmp_path, "test")[1].tolist() == m.labels("test")


def test_discover_skips_hidden_folders_inside_an_identity(tmp_path):
    """A thumbnail cache (.thumbnails/) or a sync tool's folder inside a person's folder is no picture of them."""
    (tmp_path / "Alice" / ".thumbnails").mkdir(parents=True)
    (tmp_path / "Alice" / "trip").mkdir()
    for rel in ("Alice/a.jpg", "Alice/.thumbnails/a.jpg", "Alice/trip/b.png"):
        (tmp_path / rel).write_bytes(b"x")
    assert discover_images(tmp_path) == {"Alice": ["Alice/a.jpg", "Alice/trip/b.png"]}


def test_float_and_32_bit_greyscale_pictures_keep_their_brightness(tmp_path):
    """A float TIFF in [0, 1] is scaled to 0..255; a 32-bit integer TIFF of 8-bit values is not divided."""
    from PIL import Image

    from edgenode.data import load_rgb

    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.array([[0, 100, 200]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F" and Image.open(tmp_path / "i.tif").mode == "I"
    assert list(np.asarray(load_rgb(tmp_path / "f.tif"))[0, :, 1]) == [0, 128, 255]
    assert list(np.asarray(load_rgb(tmp_path / "i.tif"))[0, :, 1]) == [0, 100, 200]
