"""Files that travel between stages: atomic writes, hashes, JSON sidecars.

Every artifact is written to a temporary name in the destination folder and renamed into place, so a
crash or a concurrent reader never sees a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from edgenode.errors import ArtifactError, ArtifactPathError


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def human_size(n_bytes: int | None) -> str:
    """File sizes in binary units, as every report prints them: ``868.8 KiB``."""
    if n_bytes is None:
        return "—"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:  # a read-only or full file system: name the file asked for, not the temporary's name
        raise _naming(exc, final) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes files owner-only; artifacts are meant to be shared and copied
        os.replace(tmp_path, final)
        _fsync_folder(final.parent)
    except OSError as exc:
        if exc.filename is not None and os.fsdecode(exc.filename) == str(tmp_path):
            raise _naming(exc, final) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX keeps it in the folder's entry); best effort: Windows cannot open a
    folder for it, and some file systems refuse."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error (type, errno, message) naming ``path`` alone: a user never asked for the hidden temporary."""
    return type(exc)(exc.errno, exc.strerror, str(path)) if exc.errno is not None else exc


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and a fixed layout: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_json(final: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(final, canonical_json(obj).encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactPathError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}",
                                "pass the JSON file itself" if path.is_dir() else
                                f"check the path (a relative one starts at {Path.cwd()})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})", "regenerate it") from None
    except PermissionError as exc:
        raise ArtifactPathError(f"{path}: cannot be read ({exc.strerror})", "fix its permissions") from None


_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def content_kind(head: bytes) -> str:
    """What a file is from its first bytes: checkpoint, onnx, image, json, text, empty or binary.

    Every stage uses this one guess to refuse a file of the wrong kind for an argument (an ONNX file given as
    a checkpoint, a picture given as a model) in one line, before any parser gets to produce its own error.
    """
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":  # torch.save's zip container
        return "checkpoint"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # legacy pickle torch.save
        return "checkpoint"
    if head[:1] == b"\x08":  # protobuf field 1 (ModelProto.ir_version, varint): how every ONNX writer starts
        return "onnx"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "json"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "text"
    return "binary"


def file_kind(path: str | os.PathLike) -> str:
    """:func:`content_kind` of the file at ``path`` (which must exist)."""
    with open(path, "rb") as handle:
        return content_kind(handle.read(64))


# How an error line names each kind: "<path>: is an ONNX model, not a split manifest".
KIND_WORDS = {"checkpoint": "a training checkpoint", "onnx": "an ONNX model", "engine": "a TensorRT engine",
              "image": "an image", "json": "a JSON file", "text": "a text file", "binary": "a binary file",
              "empty": "an empty file"}


def npz_members(path: str | os.PathLike) -> set[str] | None:
    """The array names of an ``.npz`` file, or None when ``path`` is not one (a checkpoint is a zip file too)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    return {n.removesuffix(".npy") for n in names} if names and all(n.endswith(".npy") for n in names) else None


def describe_file(path: str | os.PathLike) -> str:
    """What an existing file is, in the words of an error line: "a training checkpoint", "an .npz archive"…"""
    kind = file_kind(path)
    if kind == "checkpoint" and npz_members(path) is not None:
        return "an .npz archive"
    return KIND_WORDS.get(kind, f"a {kind} file")


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the metadata that mirrors an artifact, plus its sha256."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: str | os.PathLike, metadata: dict[str, Any], sha256: str | None = None) -> Path:
    """Write ``metadata`` beside ``artifact`` with the file's sha256 (``sha256``: already computed, e.g. of the
    temporary file that is about to be renamed to ``artifact``)."""
    record = dict(metadata)
    record["sha256"] = sha256 or sha256_file(artifact)
    record["file"] = Path(artifact).name
    return write_json(sidecar_path(artifact), record)


def read_sidecar(artifact: str | os.PathLike, verify: bool = True, data: bytes | None = None) -> dict[str, Any]:
    """Read an artifact's sidecar; with ``verify`` the file's sha256 must match the one recorded.

    Pass the artifact's bytes as ``data`` when they were read already and are what will be used: the hash is
    then of exactly those bytes, so a file replaced between the check and the use cannot slip through.
    """
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not side.is_file():
        raise ArtifactError(f"{artifact}: metadata sidecar {side.name} is missing", "re-export the artifact")
    record = read_json(side)
    if not isinstance(record, dict):
        raise ArtifactError(f"{side}: not a metadata sidecar (JSON {type(record).__name__}, not an object)",
                            "re-export the artifact")
    if verify:
        actual = sha256_bytes(data) if data is not None else sha256_file(artifact)
        if actual != record.get("sha256"):
            raise ArtifactError(
                f"{artifact}: sha256 {actual[:12]}… does not match its sidecar ({str(record.get('sha256'))[:12]}…)",
                "the file was modified or truncated; re-export it",
            )
    return record
