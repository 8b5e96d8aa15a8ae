"""Near-duplicate detection (dHash) and the leakage-aware test set / unlabelled pool built on it."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from edgenode.data import DataWarning, Manifest, SplitConfig, load_rgb
from edgenode.data.near_duplicates import (
    NearDuplicate,
    _popcount_table,
    clean_unlabeled_pool,
    compute_hashes,
    dhash,
    find_near_duplicates,
    identity_of,
    leaky_files,
    read_near_duplicates,
    read_pairs_of,
    write_near_duplicates,
)
from edgenode.errors import DataError, DataPathError, UsageError


def _face(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random picture (blurred noise): dHash needs structure at the 9x8 scale, not pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC))


def _bits(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


# ---------------------------------------------------------------- dhash


def test_dhash_identical_images_and_input_kinds_agree():
    pixels = _face(1)
    h = dhash(pixels)
    assert isinstance(h, int) and 0 <= h < 2**64
    assert dhash(pixels.copy()) == h
    assert dhash(Image.fromarray(pixels, "RGB")) == h
    assert dhash(Image.fromarray(pixels, "RGB").convert("RGBA")) == h  # opaque alpha changes nothing
    grey = np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    assert dhash(grey) == h


def test_dhash_matches_the_definition_bit_by_bit():
    """Greyscale, LANCZOS to width 9 x height 8, bit set where a pixel is brighter than its left neighbour."""
    pixels = _face(2, size=50)
    small = np.asarray(Image.fromarray(pixels, "RGB").convert("L").resize((9, 8), Image.Resampling.LANCZOS))
    expected = 0
    for row in range(8):
        for col in range(8):
            expected = (expected << 1) | int(small[row, col + 1] > small[row, col])
    assert dhash(pixels) == expected
    # a horizontal ramp brightening to the right sets every bit; the mirrored one sets none
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1))
    assert dhash(ramp) == 2**64 - 1
    assert dhash(ramp[:, ::-1].copy()) == 0
    assert dhash(np.full((40, 40, 3), 128, dtype=np.uint8)) == 0  # equal neighbours: "brighter" is strict


def test_dhash_puts_transparency_on_white_like_every_decode():
    """An RGBA picture is hashed as load_rgb would give it (composited on white), not with alpha dropped."""
    pixels = _face(4)
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 255, dtype=np.uint8)])
    rgba[:, :48] = (0, 0, 0, 0)  # left half: transparent black
    on_white = pixels.copy()
    on_white[:, :48] = 255
    assert dhash(Image.fromarray(rgba, "RGBA")) == dhash(on_white)
    assert dhash(Image.fromarray(rgba, "RGBA")) != dhash(Image.fromarray(rgba[..., :3].copy(), "RGB"))


def test_dhash_is_stable_under_reencoding_and_brightening_but_not_across_pictures():
    pixels = _face(3)
    h = dhash(pixels)
    reencoded = _jpeg_roundtrip(pixels, quality=70)
    brighter = np.clip(pixels.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    smaller = np.asarray(Image.fromarray(pixels, "RGB").resize((64, 64), Image.Resampling.LANCZOS))
    assert _bits(h, dhash(reencoded)) <= 4
    assert _bits(h, dhash(brighter)) <= 4
    assert _bits(h, dhash(smaller)) <= 4
    recropped = pixels[2:, 2:].copy()  # a 2-pixel re-crop moves a few bits, not none and not many
    assert 0 < _bits(h, dhash(recropped)) <= 4
    edited = np.clip(pixels.astype(np.float64) * 1.1 + 10, 0, 255).astype(np.uint8)[2:, 2:].copy()
    assert _bits(h, dhash(_jpeg_roundtrip(edited, quality=60))) <= 4  # re-crop + brighten + re-encode
    distances = [_bits(h, dhash(_face(seed))) for seed in range(10, 30)]
    assert min(distances) > 10, distances  # unrelated pictures: about 32 bits apart on average
    assert 20 < np.mean(distances) < 44


def test_dhash_refuses_what_is_not_an_rgb_picture():
    with pytest.raises(UsageError, match="uint8"):
        dhash(np.zeros((8, 9, 3), dtype=np.float32))
    with pytest.raises(UsageError, match="HxWx3"):
        dhash(np.zeros((8, 9, 4), dtype=np.uint8))
    with pytest.raises(UsageError, match="empty"):
        dhash(np.zeros((0, 9, 3), dtype=np.uint8))
    with pytest.raises(UsageError, match="Pillow image or a numpy array"):
        dhash([[0, 1], [2, 3]])


# ---------------------------------------------------------------- compute_hashes


def test_compute_hashes_matches_dhash_and_masks_undecodable_files(tmp_path):
    folder = tmp_path / "images" / "Person A"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_face(40 + i), "RGB").save(folder / f"a{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a picture at all\n")
    files = ["Person A/a0.png", "Person A/broken.jpg", "Person A/a1.png", "Person A/a2.png"]
    skipped: list[tuple[str, str]] = []
    with pytest.warns(DataWarning, match="1 of 4 files"):
        hashes = compute_hashes(tmp_path, files, workers=2, skipped=skipped)
    assert hashes.dtype == np.uint64 and hashes.shape == (4,)
    assert list(np.ma.getmaskarray(hashes)) == [False, True, False, False]
    assert [f for f, _ in skipped] == ["Person A/broken.jpg"] and "not an image" in skipped[0][1]
    for slot in (0, 2, 3):
        assert int(hashes[slot]) == dhash(load_rgb(tmp_path / "images" / files[slot]))
    # a masked slot takes part in no pair, even with a threshold that matches everything
    pairs = find_near_duplicates(files, hashes, max_distance=64)
    assert {p.file_a for p in pairs} | {p.file_b for p in pairs} == {files[0], files[2], files[3]}
    assert len(pairs) == 3
    with pytest.raises(UsageError, match="workers"):
        compute_hashes(tmp_path, files, workers=0)


def test_compute_hashes_over_a_synthetic_data_set_finds_a_planted_copy(synthetic_root, tmp_path):
    """A re-encoded copy of one synthetic face, filed under another name, is the only pair found."""
    base = synthetic_root / "images"
    files = sorted(p.relative_to(base).as_posix() for p in base.glob("*/*.png"))[:30]
    root = tmp_path / "copy"
    for name in files:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes((base / name).read_bytes())
    original = files[5]
    copy = f"{original.split('/')[0]}/copy-of-five.jpg"
    Image.open(base / original).convert("RGB").save(root / "images" / copy, "JPEG", quality=85)
    names = files + [copy]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # nothing is skipped here
        hashes = compute_hashes(root, names)
    pairs = find_near_duplicates(names, hashes, max_distance=4)
    assert [(p.file_a, p.file_b) for p in pairs] == [tuple(sorted((original, copy)))]


# ---------------------------------------------------------------- find_near_duplicates


def test_find_near_duplicates_against_known_distances():
    base = 0x0123_4567_89AB_CDEF
    hashes = np.array([base, base ^ 0b1, base ^ 0b111, base ^ (0xFF << 40), base ^ 0b1111, base], dtype=np.uint64)
    files = ["p/e.jpg", "p/d.jpg", "q/c.jpg", "q/b.jpg", "r/a.jpg", "s/f.jpg"]
    # distances: e-d 1, e-c 3, e-a 4, e-f 0, d-c 2, d-a 3, d-f 1, c-a 1, c-f 3, a-f 4; b is 8+ from all
    got = find_near_duplicates(files, hashes, max_distance=4)
    expected = sorted([
        NearDuplicate("p/d.jpg", "p/e.jpg", 1), NearDuplicate("p/e.jpg", "q/c.jpg", 3),
        NearDuplicate("p/e.jpg", "r/a.jpg", 4), NearDuplicate("p/e.jpg", "s/f.jpg", 0),
        NearDuplicate("p/d.jpg", "q/c.jpg", 2), NearDuplicate("p/d.jpg", "r/a.jpg", 3),
        NearDuplicate("p/d.jpg", "s/f.jpg", 1), NearDuplicate("q/c.jpg", "r/a.jpg", 1),
        NearDuplicate("q/c.jpg", "s/f.jpg", 3), NearDuplicate("r/a.jpg", "s/f.jpg", 4),
    ], key=lambda p: (p.hamming, p.file_a, p.file_b))
    assert got == expected
    assert all(p.file_a < p.file_b for p in got)
    assert [p for p in find_near_duplicates(files, hashes, max_distance=1)] == [p for p in expected if p.hamming <= 1]
    assert find_near_duplicates(files, hashes, max_distance=0) == [NearDuplicate("p/e.jpg", "s/f.jpg", 0)]
    assert len(find_near_duplicates(files, hashes, max_distance=64)) == 15  # every pair, each once


def test_find_near_duplicates_brute_force_matches_a_direct_check_across_chunks(monkeypatch):
    """More hashes than one chunk (shrunk to 7 rows), planted near pairs: the result equals a plain double loop."""
    import edgenode.data.near_duplicates as nd

    monkeypatch.setattr(nd, "_CHUNK", 7)
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, size=40, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 40, dtype=np.uint64)
    values[31] = values[2] ^ np.uint64(1 << 63 | 1 << 5)  # 2 bits, rows in different chunks
    values[17] = values[16] ^ np.uint64(0b1011)  # 3 bits
    values[39] = values[0]
    files = [f"id{i % 3}/img{i:02d}.jpg" for i in range(40)]
    expected = sorted(
        ((min(files[i], files[j]), max(files[i], files[j]), _bits(int(values[i]), int(values[j])))
         for i in range(40) for j in range(i + 1, 40) if _bits(int(values[i]), int(values[j])) <= 4),
        key=lambda t: (t[2], t[0], t[1]))
    got = [(p.file_a, p.file_b, p.hamming) for p in nd.find_near_duplicates(files, values, 4)]
    assert got == expected and len(got) >= 3


def test_popcount_fallback_for_old_numpy_agrees():
    values = np.array([0, 1, 2**64 - 1, 0x8000_0000_0000_0001, 0x0F0F_0F0F_0F0F_0F0F], dtype=np.uint64)
    assert list(_popcount_table(values)) == [0, 1, 64, 2, 32]
    grid = values[:, None] ^ values[None, :]
    assert np.array_equal(_popcount_table(grid), [[_bits(int(a), int(b)) for b in values] for a in values])


def test_find_near_duplicates_refuses_bad_input():
    hashes = np.array([1, 2, 3], dtype=np.uint64)
    with pytest.raises(UsageError, match="3 files but hashes shaped"):
        find_near_duplicates(["a", "b", "c"], hashes[:2])
    with pytest.raises(UsageError, match="twice"):
        find_near_duplicates(["a", "b", "a"], hashes)
    with pytest.raises(UsageError, match="max_distance"):
        find_near_duplicates(["a", "b", "c"], hashes, max_distance=65)
    with pytest.raises(UsageError, match="non-negative"):
        find_near_duplicates(["a", "b", "c"], np.array([1.0, 2.0, 3.0]))
    with pytest.raises(UsageError, match="non-negative"):
        find_near_duplicates(["a", "b", "c"], np.array([1, -2, 3]))
    assert find_near_duplicates(["a", "b", "c"], np.array([1, 3, 7]), 1) == [
        NearDuplicate("a", "b", 1), NearDuplicate("b", "c", 1)]  # plain non-negative ints are fine


# ---------------------------------------------------------------- tsv


def test_tsv_round_trip(tmp_path):
    pairs = [NearDuplicate("Zendaya/Z 1.jpg", "Selena Gomez/S_2.jpg", 0), NearDuplicate("a b/ü.jpg", "a b/v.jpg", 4)]
    path = write_near_duplicates(tmp_path / "sub" / "nd.tsv", pairs)
    assert path == tmp_path / "sub" / "nd.tsv"
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "file_a\tfile_b\thamming" and text.endswith("\n")
    assert read_near_duplicates(path) == pairs
    assert [p.name for p in path.parent.iterdir()] == ["nd.tsv"]  # no temporary left behind
    write_near_duplicates(path, [])
    assert read_near_duplicates(path) == []


def test_tsv_reads_the_shipped_layout(tmp_path):
    """The Pins file's layout: a header, tab separated, trailing newline; CRLF and a BOM are tolerated."""
    path = tmp_path / "near_duplicates.tsv"
    path.write_bytes("\ufefffile_a\tfile_b\thamming\r\nA/x.jpg\tB/y.jpg\t3\r\n\r\nA/x.jpg\tC/z.jpg\t4\r\n\r\n".encode())
    assert read_near_duplicates(path) == [NearDuplicate("A/x.jpg", "B/y.jpg", 3),
                                          NearDuplicate("A/x.jpg", "C/z.jpg", 4)]


@pytest.mark.parametrize("content, message", [
    (b"", "expected the header"),
    (b"a\tb\tc\nA/x.jpg\tB/y.jpg\t3\n", "expected the header"),
    (b"file_a\tfile_b\thamming\nA/x.jpg\tB/y.jpg\n", r"line 2: 2 tab-separated columns, 3 expected"),
    (b"file_a\tfile_b\thamming\nA/x.jpg\tB/y.jpg\t1\nA/x.jpg\tB/y.jpg\tfour\n", r"line 3: hamming 'four'"),
    (b"file_a\tfile_b\thamming\nA/x.jpg\tB/y.jpg\t65\n", "outside 0..64"),
    (b"file_a\tfile_b\thamming\n\tB/y.jpg\t1\n", "empty file name"),
    (b"file_a\tfile_b\thamming\nA/\xff.jpg\tB/y.jpg\t1\n", "not a UTF-8 text file"),
])
def test_tsv_bad_content_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_near_duplicates(path)
    assert str(path) in str(info.value) and "write_near_duplicates" in str(info.value)
    assert "\n" not in str(info.value)


def test_tsv_missing_or_folder_is_a_path_error(tmp_path):
    with pytest.raises(DataPathError, match="file not found"):
        read_near_duplicates(tmp_path / "nope.tsv")
    with pytest.raises(DataPathError, match="is a folder"):
        read_near_duplicates(tmp_path)


def test_tsv_refuses_unwritable_names_and_keeps_the_old_file(tmp_path):
    path = write_near_duplicates(tmp_path / "nd.tsv", [NearDuplicate("a/1.jpg", "a/2.jpg", 1)])
    with pytest.raises(UsageError, match="tab or line break"):
        write_near_duplicates(path, [NearDuplicate("a/1.jpg", "a/2.jpg", 0), NearDuplicate("a/x\ty.jpg", "b.jpg", 2)])
    assert read_near_duplicates(path) == [NearDuplicate("a/1.jpg", "a/2.jpg", 1)]


# ---------------------------------------------------------------- leakage


def _manifest(nested: bool = False) -> Manifest:
    """Two identities A and B, three files per split each (under a sub-folder of the identity when ``nested``), plus
    an unused pool in a not-sorted order."""
    classes = ["A", "B"]
    sub = "trip/" if nested else ""
    splits = {
        name: [(f"{c}/{sub}{name}{i}.jpg", k) for k, c in enumerate(classes) for i in range(3)]
        for name in ("train", "val", "test")
    }
    unused = [(f"{c}/extra{i}.jpg", k) for i in (3, 0, 2, 1) for k, c in enumerate(classes)]
    return Manifest(classes=classes, splits=splits, unused=unused, excluded={}, skipped=[],
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    config=SplitConfig(per_class=13, train=3, val=3, test=3, image_size=32))


PAIRS = [
    NearDuplicate("A/test0.jpg", "A/train1.jpg", 2),   # leak, same identity
    NearDuplicate("A/train2.jpg", "A/test1.jpg", 0),   # leak, file order reversed
    NearDuplicate("B/test0.jpg", "A/train0.jpg", 3),   # cross identity: ignored by default
    NearDuplicate("B/test1.jpg", "B/val0.jpg", 1),     # test-val: only with against including val
    NearDuplicate("B/test2.jpg", "B/extra0.jpg", 0),   # test-unused: never a train leak
    NearDuplicate("A/val1.jpg", "A/train0.jpg", 4),    # val leak
    NearDuplicate("A/extra1.jpg", "A/val2.jpg", 1),    # pool copy of a val file
    NearDuplicate("A/extra2.jpg", "B/test2.jpg", 4),   # pool copy of a test file of another identity
    NearDuplicate("B/extra1.jpg", "B/train0.jpg", 0),  # pool copy of a train file: harmless
    NearDuplicate("A/extra3.jpg", "B/extra3.jpg", 0),  # pool-pool: harmless
]


def test_leaky_files_same_identity_by_default():
    m = _manifest()
    assert leaky_files(m, PAIRS) == {"A/test0.jpg", "A/test1.jpg"}
    assert leaky_files(m, PAIRS, same_identity_only=False) == {"A/test0.jpg", "A/test1.jpg", "B/test0.jpg"}
    assert leaky_files(m, PAIRS, against=("train", "val")) == {"A/test0.jpg", "A/test1.jpg", "B/test1.jpg"}
    assert leaky_files(m, PAIRS, against="train") == {"A/test0.jpg", "A/test1.jpg"}  # a bare name is one split
    assert leaky_files(m, PAIRS, split="val") == {"A/val1.jpg"}
    assert leaky_files(m, PAIRS, split="val", against=("test",)) == {"B/val0.jpg"}
    assert leaky_files(m, []) == set()


def test_leaky_files_refuses_unknown_or_overlapping_splits():
    m = _manifest()
    with pytest.raises(UsageError, match="unknown split 'tset'"):
        leaky_files(m, PAIRS, split="tset")
    with pytest.raises(UsageError, match="unknown split 'unused'"):
        leaky_files(m, PAIRS, against=("train", "unused"))
    with pytest.raises(UsageError, match="also in against"):
        leaky_files(m, PAIRS, split="test", against=("train", "test"))


def test_clean_unlabeled_pool_drops_copies_of_val_and_test_of_any_identity_in_order():
    m = _manifest()
    pool = clean_unlabeled_pool(m, PAIRS)
    dropped = {"B/extra0.jpg", "A/extra1.jpg", "A/extra2.jpg"}
    assert pool == [entry for entry in m.unused if entry[0] not in dropped]
    assert [f for f, _ in pool] == ["A/extra3.jpg", "B/extra3.jpg", "A/extra0.jpg", "B/extra2.jpg", "B/extra1.jpg"]
    assert clean_unlabeled_pool(m, []) == m.unused
    assert len(m.unused) == 8 and ("A/extra1.jpg", 0) in m.unused  # the manifest itself is left alone


def test_pairs_read_back_from_disk_give_the_same_leaks(tmp_path):
    path = write_near_duplicates(tmp_path / "nd.tsv", PAIRS)
    m = _manifest()
    assert leaky_files(m, read_near_duplicates(path)) == leaky_files(m, PAIRS)
    assert clean_unlabeled_pool(m, read_near_duplicates(path)) == clean_unlabeled_pool(m, PAIRS)


def test_a_table_naming_no_file_of_the_split_is_refused_not_read_as_no_leaks(tmp_path):
    """Kaggle's pins_<identity>/ paths against a table of <identity>/ paths match nothing: without this check
    `evaluate --near-duplicates` reported 0 leaks and training cleaned nothing from its pool."""
    from edgenode.data.near_duplicates import read_pairs_of

    m = _manifest()
    path = write_near_duplicates(tmp_path / "nd.tsv", PAIRS)
    assert read_pairs_of(m, path) == read_near_duplicates(path)
    foreign = write_near_duplicates(tmp_path / "foreign.tsv",
                                    [NearDuplicate("pins_" + p.file_a, "pins_" + p.file_b, p.hamming) for p in PAIRS])
    with pytest.raises(UsageError, match=f"--near-duplicates {foreign}: none of its {len(PAIRS)} pairs names a file"):
        read_pairs_of(m, foreign)
    assert read_pairs_of(m, write_near_duplicates(tmp_path / "empty.tsv", [])) == []


def test_the_identity_of_a_nested_path_is_its_top_folder():
    assert identity_of("Zendaya/Zendaya12_3.jpg") == "Zendaya"
    assert identity_of("Zendaya/red carpet/2019/a.jpg") == "Zendaya"
    m = _manifest(nested=True)
    pairs = [NearDuplicate("A/trip/test0.jpg", "A/trip/train1.jpg", 1),   # one identity, in a sub-folder
             NearDuplicate("B/trip/test1.jpg", "A/trip/train0.jpg", 0)]   # two identities
    assert leaky_files(m, pairs) == {"A/trip/test0.jpg"}


def test_a_table_of_the_whole_data_set_is_read_for_a_manifest_of_part_of_it(tmp_path):
    """The shipped table lists pairs of every picture; a manifest of part of it names only some. The table is
    refused only when no pair names a file of the manifest, not as soon as one pair does not."""
    m = _manifest()
    pairs = [NearDuplicate("A/test0.jpg", "A/train1.jpg", 2), NearDuplicate("C/x.jpg", "C/y.jpg", 0)]
    path = write_near_duplicates(tmp_path / "nd.tsv", pairs)
    assert read_pairs_of(m, path) == pairs
    assert leaky_files(m, read_pairs_of(m, path)) == {"A/test0.jpg"}


@pytest.mark.parametrize("name", ["a/x\ny.jpg", "a/x\ry.jpg", "a/x\ty.jpg", ""])
def test_a_name_with_a_line_break_or_tab_is_not_written(tmp_path, name):
    """A line break inside a name would split one row into two, and the table would read back as something else."""
    path = write_near_duplicates(tmp_path / "nd.tsv", [NearDuplicate("a/1.jpg", "a/2.jpg", 1)])
    with pytest.raises(UsageError, match="cannot write the file name"):
        write_near_duplicates(path, [NearDuplicate(name, "b/2.jpg", 0)])
    assert read_near_duplicates(path) == [NearDuplicate("a/1.jpg", "a/2.jpg", 1)]
