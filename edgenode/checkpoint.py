"""Training checkpoints: self-describing, written atomically, loaded without unpickling code.

A checkpoint is a plain dict of tensors and JSON-like values saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``, so loading a file from elsewhere can never execute code. It carries what
every later stage needs: model config (with the solver), class names, input size and normalisation, the
split manifest's hash, epoch, metrics and — for resuming — optimiser and scheduler state.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenode import __version__
from edgenode.align import AlignSpec, alignment_name
from edgenode.artifacts import KIND_WORDS, atomic_path, file_kind, sha256_bytes
from edgenode.errors import ArtifactError, ArtifactPathError, EdgenodeError, first_line
from edgenode.model import ModelConfig, NeuralODECNN, build_model

CHECKPOINT_FORMAT = "edgenode-checkpoint/1"
# Written only for models trained on aligned faces: an older edgenode refuses the file instead of running the model
# on unaligned pictures (it would ignore the unknown "align" key and answer confidently wrong).
CHECKPOINT_FORMAT_ALIGNED = "edgenode-checkpoint/2"
CHECKPOINT_FORMATS = (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_ALIGNED)


@dataclass(frozen=True)
class InputSpec:
    """How raw pictures become model input: travels with every artifact so callers never repeat it.

    ``align`` is set for a model trained on aligned face chips (``edgenode align``): every runtime then aligns
    its inputs the same way before resizing and normalising. Absent for models trained on plain crops.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align: AlignSpec | None = None

    def to_dict(self) -> dict:
        record = {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}
        if self.align is not None:  # absent, not null: older readers and files stay as they were
            record["align"] = self.align.to_dict()
        return record

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        align = AlignSpec.from_dict(data["align"]) if data.get("align") else None
        return cls(int(data["image_size"]), tuple(map(float, data["mean"])), tuple(map(float, data["std"])), align)

    def describe(self) -> str:
        """``64 px`` or ``64 px, aligned faces (dlib-5pt)``."""
        return f"{self.image_size} px" + (f", aligned faces ({self.align.method})" if self.align else "")

    def mismatches(self, reference: "InputSpec", normalisation: bool = True) -> list[str]:
        """How this input differs from ``reference``'s, one fragment each (``input size 48 vs. 64 px``, this one
        first): a model fed the other's pictures would run and answer wrongly. ``normalisation=False`` leaves out
        mean/std, for a caller that re-expresses normalised pixels (bench); parity refuses those too."""
        differ = []
        if self.image_size != reference.image_size:
            differ.append(f"input size {self.image_size} vs. {reference.image_size} px")
        if normalisation and not (np.allclose(self.mean, reference.mean, atol=1e-7) and np.allclose(self.std, reference.std, atol=1e-7)):
            differ.append(f"normalisation mean/std {list(self.mean)}/{list(self.std)} vs. {list(reference.mean)}/{list(reference.std)}")
        if self.align != reference.align:  # also two alignments that differ only in padding
            differ.append(f"face alignment {alignment_name(self.align)} vs. {alignment_name(reference.align)}")
        return differ


@dataclass
class Checkpoint:
    model_config: ModelConfig
    classes: list[str]
    input_spec: InputSpec
    manifest_sha256: str
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    ema_state_dict: dict[str, torch.Tensor] | None = None  # last.pt of a run with --ema-decay: its weight average
    path: Path | None = None
    sha256: str | None = None

    def build_model(self) -> NeuralODECNN:
        model = build_model(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT_ALIGNED if ckpt.input_spec.align is not None else CHECKPOINT_FORMAT,
        "edgenode_version": __version__,
        "model": ckpt.model_config.to_dict(),
        "classes": list(ckpt.classes),
        "input": ckpt.input_spec.to_dict(),
        "manifest_sha256": ckpt.manifest_sha256,
        "epoch": ckpt.epoch,
        "metrics": ckpt.metrics or {},
        "history": ckpt.history or [],
        "train_config": ckpt.train_config or {},
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "optimizer": ckpt.optimizer,
        "scheduler": ckpt.scheduler,
    }
    if ckpt.ema_state_dict is not None:  # absent otherwise: files of runs without it stay as they were
        payload["ema_state_dict"] = {k: v.detach().cpu() for k, v in ckpt.ema_state_dict.items()}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as exc:  # torch's zip writer says "disk full" as a RuntimeError; the file before stays whole
        raise ArtifactError(f"{path}: could not be written ({first_line(exc)})",
                            "free disk space (or fix the folder's permissions) and run again; --resume continues "
                            "a training run from its last whole checkpoint") from None
    return Path(path)


_NOT_CHECKPOINTS = ("onnx", "image", "json")  # kinds named in one line before torch.load could misread them


def _load_error(path: Path, exc: Exception, data: bytes) -> ArtifactError:
    """One line for a file ``torch.load(weights_only=True)`` refused; a pickle that would run code says so."""
    text = str(exc)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code or "Weights only load failed" in text:
        what = f" ({code.group(1)})" if code else ""
        return ArtifactError(
            f"{path}: refused: the file is a pickle that would run code when loaded{what}; checkpoints are read "
            f"with torch.load(weights_only=True), which accepts plain tensors and values only",
            "use a checkpoint written by `edgenode train`; never load this file with weights_only=False",
        )
    # torch saves a zip archive with one top folder holding data.pkl: another archive (an .npz) is not one of
    # its files; one of its archives that fails to load was cut short or damaged, whatever the reader's words
    if "not in a subdirectory" in text or "data.pkl" in text:
        detail = "a zip archive, but not one that torch.save wrote (an .npz or another archive?)"
    elif data.startswith(b"PK\x03\x04") or "zip archive" in text or "miniz" in text:
        detail = "its zip archive is incomplete or damaged"
    else:  # the first sentence of the loader's message, whole
        first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(exc).__name__
        detail = first if len(first) <= 160 else first[:159] + "…"
    return ArtifactError(f"{path}: not a readable edgenode checkpoint ({detail})",
                         "the file is damaged or truncated; use the best.pt or last.pt that `edgenode train` wrote")


def _foreign_error(path: Path, payload: Any) -> ArtifactError:
    """A PyTorch file that is not an edgenode checkpoint: a newer edgenode's, or someone else's (a bare state_dict)."""
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(fmt, str) and fmt.startswith("edgenode-checkpoint/"):
        return ArtifactError(f"{path}: checkpoint format {fmt!r} is newer than this edgenode reads "
                             f"({', '.join(CHECKPOINT_FORMATS)})", "upgrade edgenode")
    what = "a dict without edgenode's 'format' key" if isinstance(payload, dict) else f"a {type(payload).__name__}"
    return ArtifactError(f"{path}: a PyTorch file but not an edgenode checkpoint ({what}, e.g. a bare state_dict)",
                         "pass the best.pt or last.pt that `edgenode train` wrote")


def _failed_crc(data: bytes) -> str | None:
    """The first record of a zip archive whose bytes fail their CRC-32, or None.

    torch.save writes a zip archive with a CRC of every record, and torch.load does not check them: one flipped
    byte in the weights loads without a word (2-4 ms for a 4.5 MB checkpoint). What is not a readable zip archive
    is left to torch.load, whose error is then described.
    """
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError):
        return None
    return bad.split("/", 1)[-1] if bad else None  # "data/16": torch's archive folder is named after a temporary file


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint" if path.is_dir() else "checkpoint not found"
        raise ArtifactPathError(f"{path}: {what}", "pass the best.pt or last.pt that `edgenode train` wrote")
    kind = file_kind(path)
    if kind in _NOT_CHECKPOINTS:
        raise ArtifactPathError(f"{path}: is {KIND_WORDS[kind]}, not a training checkpoint",
                                "pass the best.pt or last.pt that `edgenode train` wrote")
    data = path.read_bytes()  # hashed and parsed from the same bytes, even if the file is replaced meanwhile
    damaged = _failed_crc(data)
    if damaged is not None:
        raise ArtifactError(f"{path}: damaged checkpoint: its record {damaged} fails the zip archive's CRC check",
                            "the bytes changed on disk or in a copy; copy the file again from where it was written")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError, TypeError) as exc:
        raise _load_error(path, exc, data) from None
    if not isinstance(payload, dict) or payload.get("format") not in CHECKPOINT_FORMATS:
        raise _foreign_error(path, payload)
    try:
        return Checkpoint(
            model_config=ModelConfig.from_dict(payload["model"]),
            classes=list(payload["classes"]),
            input_spec=InputSpec.from_dict(payload["input"]),
            manifest_sha256=payload["manifest_sha256"],
            state_dict=payload["state_dict"],
            epoch=int(payload["epoch"]),
            metrics=payload.get("metrics"),
            history=payload.get("history"),
            train_config=payload.get("train_config"),
            optimizer=payload.get("optimizer"),
            scheduler=payload.get("scheduler"),
            ema_state_dict=payload.get("ema_state_dict"),
            path=path,
            sha256=sha256_bytes(data),
        )
    except ArtifactError as exc:  # a record this edgenode cannot honour (e.g. a newer alignment method): its own hint
        raise ArtifactError(f"{path}: {exc.message}", exc.hint) from None
    except (EdgenodeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: damaged edgenode checkpoint ({exc})", "use the best.pt or last.pt that `edgenode train` wrote") from None
