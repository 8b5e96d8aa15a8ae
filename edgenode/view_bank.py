"""The teacher's descriptors of augmented training views, computed once on the CPU (``edgenode teacher-views``).

Why: the teacher's stored descriptor of a picture is a poor target for the shifted view the student is trained
on. On aligned chips, training's default 8-px shift moves the teacher's own descriptor of the view to a mean
cosine of 0.72 from the stored one, and its top-1 differs on 17 % of views (RESULTS.md). Smaller shifts keep the
targets valid but lose the variety (2-px shifts did no better at full length), and the teacher (dlib) cannot run
beside the student on the GPU. So a bank holds, for each training picture (the train split and the unlabelled
pool, by file) and each of K views, the view's random parameters (:class:`edgenode.augment.ViewParams`) and the
teacher's descriptor of exactly that view. ``edgenode train --teacher-views`` shows the student one of the K views
of each picture every epoch, rebuilt with :func:`edgenode.augment.apply_view`, and distils the descriptor the
teacher gave that view: the same variety, with targets that match.

The teacher describes a view as examples/teacher_ceiling.py's "64px-chip" variant does (the chip resized to its
150x150 input): on the unaugmented 64-px chips that keeps its accuracy at 0.981 against 0.984.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgenode.artifacts import atomic_path
from edgenode.augment import ViewParams, apply_view, draw_view, shift_pad
from edgenode.errors import ArtifactError, ArtifactPathError, DataError, UsageError

TEACHER_INPUT = 150  # dlib's ResNet describes a 150x150 aligned chip
FORMAT = "edgenode-view-bank/1"


@dataclass
class ViewBank:
    """K augmented views of N training pictures and the teacher's descriptor of each (rows in ``files`` order)."""

    files: np.ndarray  # str (N,), relative to the images folder, as in a split manifest
    side: int  # the chips' side, pixels: the views' shifts are in these pixels
    shift: float  # --augment-shift the views were drawn with
    color: float  # --augment-color the views were drawn with
    seed: int
    flip: np.ndarray  # bool (K, N)
    pad: int
    dy: np.ndarray  # int16 (K, N)
    dx: np.ndarray  # int16 (K, N)
    colors: np.ndarray | None  # float32 (K, N, 3) or None
    gray: np.ndarray | None  # bool (K, N) or None
    embedding: np.ndarray  # float16 (K, N, D): the teacher's raw (uncentred) descriptors of the views
    pixels_crc32: np.ndarray  # uint32 (N,): of each chip's decoded pixels, so training can tell that it reads the same
    provenance: dict = field(default_factory=dict)  # the teacher and the chips' alignment method
    path: str = ""

    @property
    def views(self) -> int:
        return int(self.embedding.shape[0])

    def gather(self, view: torch.Tensor, rows: torch.Tensor) -> ViewParams:
        """The parameters of view ``view[i]`` of picture ``rows[i]``, for each i."""
        v, r = view.cpu().numpy(), rows.cpu().numpy()
        return view_params(self.pad, *(None if a is None else a[v, r] for a in (self.flip, self.dy, self.dx, self.colors, self.gray)))

    def rows(self, files: list[str]) -> np.ndarray:
        """Each file's row in the bank, -1 where it has none."""
        index = {str(f): i for i, f in enumerate(self.files)}
        return np.array([index.get(f, -1) for f in files], dtype=np.int64)

    def describe(self) -> str:
        color = f", --augment-color {self.color:g}" if self.color else ""
        return f"{self.views} views of {len(self.files)} pictures ({self.side} px, --augment-shift {self.shift:g}{color})"


VIEW_FIELDS = ("flip", "dy", "dx", "colors", "gray")  # ViewParams' per-picture arrays, in its order


def view_params(pad: int, flip: np.ndarray, dy: np.ndarray, dx: np.ndarray, colors: np.ndarray | None,
                gray: np.ndarray | None) -> ViewParams:
    """ViewParams from the numpy arrays a bank stores them in (and worker processes receive them in)."""
    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

    return ViewParams(tensor(flip), pad, tensor(dy.astype(np.int64)), tensor(dx.astype(np.int64)), tensor(colors), tensor(gray))


def pixels_crc32(image: np.ndarray) -> int:
    """Checksum of a decoded uint8 HxWx3 picture: a bank's views are valid only for these very pixels (a chip
    re-encoded as JPEG for a GPU pack, or re-aligned, is another picture to the teacher)."""
    return zlib.crc32(np.ascontiguousarray(image, dtype=np.uint8).tobytes())


def draw_bank_views(n: int, views: int, side: int, shift: float, color: float, seed: int) -> list[ViewParams]:
    """The K views' parameters for n pictures: one generator, view after view, so a bank is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return [draw_view(n, side, generator, shift, color) for _ in range(views)]


def bank_rows_for(bank: ViewBank, files: list[str], images: np.ndarray) -> np.ndarray:
    """Each training image's row in ``bank``, refused unless the bank holds views of every one of them, cut from
    these very pixels (``images``: uint8 NHWC, as training decoded ``files``)."""
    rows = bank.rows(files)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise UsageError(f"--teacher-views {bank.path}: has no views of {len(missing)} of the {len(files)} training images "
                         f"(e.g. {files[missing[0]]!r})",
                         "compute it for this run's images: edgenode teacher-views DATA --manifest SPLIT "
                         "(with --unlabeled and the same --near-duplicates as training)")
    changed = [i for i, (image, row) in enumerate(zip(images, rows)) if pixels_crc32(image) != bank.pixels_crc32[row]]
    if changed:
        raise DataError(f"--teacher-views {bank.path}: {len(changed)} of the {len(files)} training images are not the "
                        f"pictures its views were cut from (e.g. {files[changed[0]]!r}: re-encoded or re-aligned since)",
                        "compute the bank from the chips this run reads: edgenode teacher-views DATA --manifest SPLIT")
    return rows


# --- computing (dlib, in worker processes) -------------------------------------------------------------------

_RECOGNIZER = None


def _worker_init(recognizer: str) -> None:
    global _RECOGNIZER
    from edgenode.teacher import _import_dlib

    _RECOGNIZER = _import_dlib().face_recognition_model_v1(recognizer)


def _worker_describe(item: tuple[str, dict[str, np.ndarray | int | None]]) -> tuple[np.ndarray, int] | str:
    """((K, 128) float32 descriptors of the K views of one chip, the chip's pixel checksum), or the reason it
    could not be read. The chip is decoded as training decodes it (``load_resized`` to the side).

    The views come as numpy arrays: torch tensors sent to a worker travel as shared file descriptors, and a
    long run exhausts them ("Too many open files")."""
    from PIL import Image

    from edgenode.data.decode import load_resized
    from edgenode.errors import ImageDecodeError

    path, arrays = item

    def view(v: int) -> ViewParams:  # view v of this one picture
        return view_params(arrays["pad"], *(None if arrays[k] is None else arrays[k][[v]] for k in VIEW_FIELDS))

    try:
        chip = load_resized(path, arrays["side"])
    except ImageDecodeError as exc:
        return exc.reason
    x = torch.from_numpy(chip).permute(2, 0, 1)[None].float().div_(255)
    out = []
    for v in range(len(arrays["flip"])):
        pixels = (apply_view(x, view(v))[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        big = np.asarray(Image.fromarray(pixels).resize((TEACHER_INPUT, TEACHER_INPUT), Image.Resampling.BILINEAR))
        out.append(np.asarray(_RECOGNIZER.compute_face_descriptor(np.ascontiguousarray(big)), dtype=np.float32))
    return np.stack(out), pixels_crc32(chip)


def aligned_copy_to_describe(data: str | os.PathLike):
    """(alignment, chip side) of an aligned copy, with the teacher installed: what describing its views needs,
    checked in seconds, before anything slow (the CLI calls it before decoding an --unlabeled pool)."""
    from edgenode.align import read_alignment
    from edgenode.teacher import installed_provenance, model_files

    record = read_alignment(data)
    if record is None:
        raise DataError(f"{data} is not an aligned copy: the teacher describes a view as an aligned face chip",
                        "align it first: edgenode align DATA --manifest split.json --out ALIGNED")
    installed_provenance(record[0].cnn_fallback), model_files()
    return record


def compute_view_bank(data: str | os.PathLike, files: list[str], *, views: int, shift: float, color: float, seed: int = 0,
                      workers: int | None = None, progress: bool = True) -> ViewBank:
    """Draw K views of each aligned chip of ``files`` and describe each with the teacher (~55 ms a view, one core).

    ``data`` must be an aligned copy (``edgenode align``): the teacher describes a chip as an aligned face.
    Spawned workers re-import the main script: a script calling this needs ``if __name__ == "__main__":``.
    """
    from edgenode.data import images_root
    from edgenode.process_pool import process_map
    from edgenode.teacher import installed_provenance, model_files

    if views < 1:
        raise UsageError(f"--views {views}: a bank needs at least one view per picture", "pass --views 1 or more")
    if not files:
        raise DataError(f"no training pictures to describe in {data}", "pass the split manifest the chips were aligned for")
    align, side = aligned_copy_to_describe(data)
    provenance = installed_provenance(align.cnn_fallback)
    provenance.pop("method")  # how the stored descriptors found faces; the views are chips, described as below
    provenance.update(alignment=align.method, views=f"the view of the {side}-px chip resized to {TEACHER_INPUT}x{TEACHER_INPUT} "
                      "(bilinear), compute_face_descriptor(chip)")
    root = images_root(data)
    if not any((root / f).is_file() for f in files):  # another data set's manifest: said now, not after the pool ran
        raise DataError(f"{root} holds none of the manifest's {len(files)} pictures to describe (e.g. {files[0]!r}): it is "
                        "not the data folder this manifest was built from",
                        "pass the aligned copy of the data set the manifest was made from, or its manifest")
    params = draw_bank_views(len(files), views, side, shift, color, seed)
    stacked = {k: None if getattr(params[0], k) is None else np.stack([getattr(p, k).numpy() for p in params]) for k in VIEW_FIELDS}
    items = [(str(root / f), {"side": side, "pad": params[0].pad, **{k: None if a is None else a[:, i] for k, a in stacked.items()}})
             for i, f in enumerate(files)]
    results = process_map(_worker_describe, items, initializer=_worker_init, initargs=(str(model_files()[1]),),
                          workers=workers, description="teacher views", progress=progress, chunksize=16)
    bad = [(f, r) for f, r in zip(files, results) if isinstance(r, str)]
    if bad:
        raise DataError(f"{len(bad)} chip(s) of {data} could not be read, e.g. {bad[0][0]}: {bad[0][1]}",
                        "re-align the data set (edgenode align) and run again")
    embedding = np.stack([r[0] for r in results], axis=1).astype(np.float16)  # (K, N, D)
    checksums = np.array([r[1] for r in results], dtype=np.uint32)
    return ViewBank(files=np.asarray(files, dtype=str), side=side, shift=shift, color=color, seed=seed, flip=stacked["flip"],
                    pad=params[0].pad, dy=stacked["dy"].astype(np.int16), dx=stacked["dx"].astype(np.int16),
                    colors=stacked["colors"], gray=stacked["gray"], embedding=embedding, pixels_crc32=checksums,
                    provenance=provenance)


# --- the file ------------------------------------------------------------------------------------------------


def save_view_bank(path: str | os.PathLike, bank: ViewBank) -> Path:
    path = Path(path)
    meta = {"format": FORMAT, "side": bank.side, "shift": bank.shift, "color": bank.color, "seed": bank.seed,
            "pad": bank.pad, "provenance": bank.provenance}
    arrays = {"files": bank.files, "flip": bank.flip, "dy": bank.dy, "dx": bank.dx, "embedding": bank.embedding,
              "pixels_crc32": bank.pixels_crc32, "meta": np.asarray(json.dumps(meta))}
    if bank.colors is not None:
        arrays.update(colors=bank.colors, gray=bank.gray)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez would append .npz to a name
        np.savez(handle, **arrays)
    return path


def load_view_bank(path: str | os.PathLike) -> ViewBank:
    """Read and check a bank written by :func:`save_view_bank`; never unpickles."""
    path = Path(path)
    fix = "pass the .npz written by `edgenode teacher-views`"
    if not path.is_file():
        raise ArtifactPathError(f"view bank {path} not found", fix)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # not a zip, a truncated file, an object array
        raise ArtifactError(f"{path}: not a readable view bank ({type(exc).__name__}: {exc})", fix) from None
    needed = {"meta", "files", "flip", "dy", "dx", "embedding", "pixels_crc32"}
    if not needed <= set(arrays):
        raise ArtifactError(f"{path}: not a view bank (it lacks {', '.join(sorted(needed - set(arrays)))}; an .npz of "
                            "another kind?)", fix)
    damaged = f"{path}: damaged view bank"
    recompute = "recompute it with `edgenode teacher-views`"
    try:
        meta = json.loads(str(arrays["meta"]))
        version, side, shift, color, seed, pad = (meta.get("format"), int(meta["side"]), float(meta["shift"]),
                                                  float(meta["color"]), int(meta["seed"]), int(meta["pad"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: JSON that is no object
        raise ArtifactError(f"{damaged} (its meta record: {type(exc).__name__}: {exc})", recompute) from None
    if version != FORMAT:
        raise ArtifactError(f"{path}: view bank format {version!r}, this edgenode reads {FORMAT!r}",
                            "recompute it with this version's `edgenode teacher-views`, or upgrade edgenode")
    embedding = arrays["embedding"]
    if embedding.ndim != 3:
        raise ArtifactError(f"{damaged} (descriptors of shape {embedding.shape}, not views × pictures × 128)", recompute)
    k, n = embedding.shape[:2]
    colored = "colors" in arrays and "gray" in arrays
    shapes = [arrays["files"].shape == (n,), arrays["pixels_crc32"].shape == (n,)] + [arrays[a].shape == (k, n) for a in ("flip", "dy", "dx")]
    if colored:
        shapes += [arrays["colors"].shape == (k, n, 3), arrays["gray"].shape == (k, n)]
    if not all(shapes) or colored != (color > 0) or pad != shift_pad(side, shift):
        raise ArtifactError(f"{damaged} (its arrays disagree with each other or with its shift and colour)", recompute)
    if not np.isfinite(embedding.astype(np.float32)).all():
        raise ArtifactError(f"{damaged} (non-finite descriptors)", recompute)
    if n and (min(arrays["dy"].min(), arrays["dx"].min()) < 0 or max(arrays["dy"].max(), arrays["dx"].max()) > 2 * pad):
        raise ArtifactError(f"{damaged} (crop offsets outside its padding of {pad} px)", recompute)
    if not isinstance(meta.get("provenance", {}), dict):
        raise ArtifactError(f"{damaged} (its provenance is a JSON {type(meta['provenance']).__name__}, not an object)", recompute)
    return ViewBank(files=arrays["files"].astype(str), side=side, shift=shift, color=color, seed=seed,
                    flip=arrays["flip"].astype(bool), pad=pad, dy=arrays["dy"], dx=arrays["dx"],
                    colors=arrays["colors"] if colored else None, gray=arrays["gray"].astype(bool) if colored else None,
                    embedding=embedding, pixels_crc32=arrays["pixels_crc32"].astype(np.uint32),
                    provenance=dict(meta.get("provenance", {})), path=str(path))
