"""What an artifact is, read from its own bytes and metadata: never from flags the user has to repeat.

Three kinds of file reach the runtime:

``checkpoint``
    A training checkpoint (``torch.save`` zip, read with ``weights_only=True``). Its metadata is the
    checkpoint's own fields; its precision is always fp32 and its solver is the trained one unless a
    reference solver overrides it.
``onnx``
    An exported graph. Metadata lives twice: in ``metadata_props`` (travels inside the file) and in the JSON
    sidecar (``model.onnx.json``, which also records the file's sha256). When both exist they must agree and
    the sha256 must match, or the file is refused: a stale sidecar means we cannot know which is right.
``engine``
    A TensorRT plan. A plan is opaque and must stay a plain engine, so its metadata is only in the sidecar,
    which is then required.

The kind is decided from content first (zip → checkpoint, protobuf → ONNX, JSON/text → refused) and the
extension is only trusted for engines, whose bytes have no documented magic. A file whose content and name
disagree (a checkpoint renamed ``.onnx``) is refused with one line saying what it really is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from edgenode.artifacts import KIND_WORDS, content_kind, read_sidecar, sha256_bytes, sha256_file, sidecar_path
from edgenode.checkpoint import InputSpec
from edgenode.errors import ArtifactError, ArtifactPathError
from edgenode.export.golden import golden_path  # noqa: F401 - re-exported: one naming rule for golden files
from edgenode.ode.solvers import SolverConfig

KINDS = ("checkpoint", "onnx", "engine")
CHECKPOINT_EXTENSIONS = frozenset({".pt", ".pth", ".ckpt"})
ONNX_EXTENSIONS = frozenset({".onnx"})
ENGINE_EXTENSIONS = frozenset({".engine", ".plan", ".trt"})


def _extension_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_EXTENSIONS:
        return "checkpoint"
    if suffix in ONNX_EXTENSIONS:
        return "onnx"
    if suffix in ENGINE_EXTENSIONS:
        return "engine"
    return None


ANY_KIND = ("checkpoint", "onnx", "engine")
_KIND_FILES = {"checkpoint": "a .pt checkpoint", "onnx": "an .onnx file", "engine": "a TensorRT .engine"}


def _pass(allowed: tuple[str, ...], prefix: str = "") -> str:
    """The hint: what the caller takes, e.g. "pass a .pt checkpoint, an .onnx file or a TensorRT .engine"."""
    words = [_KIND_FILES[k] for k in allowed]
    return f"pass {prefix}" + (words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}")


def detect_kind(path: str | os.PathLike, allowed: tuple[str, ...] = ANY_KIND) -> str:
    """``checkpoint``, ``onnx`` or ``engine`` from content (and the name, for engines); ArtifactError otherwise.

    ``allowed``: the kinds the caller takes, which its hints name (``export`` takes a checkpoint only)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactPathError(f"{path}: file not found", _pass(allowed))
    if path.is_dir():
        raise ArtifactPathError(f"{path}: is a folder, not a model file", _pass(allowed, "one file: "))
    with open(path, "rb") as handle:
        head = handle.read(64)
    by_name = _extension_kind(path)
    by_content = content_kind(head)
    if by_content == "empty":
        raise ArtifactError(f"{path}: empty file (0 bytes)", "whatever wrote or copied it stopped before the first byte; write or copy it again")
    if by_content == "json":
        sidecar = path.name.endswith((".onnx.json", ".engine.json"))
        what = "a JSON file" + (" (an artifact's metadata sidecar)" if sidecar else "")
        raise ArtifactPathError(f"{path}: is {what}, not a model",
                                f"pass the model file itself, {path.name[:-len('.json')]}" if sidecar else _pass(allowed))
    if by_content == "image":
        raise ArtifactPathError(f"{path}: is an image, not a model",
                                _pass(allowed))
    if by_content == "text" and head.startswith(b"version https://git-lfs"):  # a clone without git-lfs
        raise ArtifactError(f"{path}: is a Git LFS pointer, not the model it stands for", "fetch the file: git lfs pull")
    if by_content == "text":
        # named like a model: a damaged copy (exit 1); otherwise a report or README passed by mistake (exit 2)
        error = ArtifactError if by_name is not None else ArtifactPathError
        raise error(f"{path}: is a text file, not a model", _pass(allowed))
    if by_name == "engine":
        if by_content in ("checkpoint", "onnx"):
            raise ArtifactError(f"{path}: is named like a TensorRT engine but is {KIND_WORDS[by_content]}",
                                "rename it, or build an engine on the device: `edgenode engine FILE.onnx` (or `edgenode "
                                "export --format engine` where TensorRT is installed)")
        return "engine"
    if by_content in ("checkpoint", "onnx"):
        if by_name is not None and by_name != by_content:
            raise ArtifactError(f"{path}: is named like {KIND_WORDS[by_name]} but is {KIND_WORDS[by_content]}",
                                "rename it to match what it is")
        return by_content
    raise ArtifactError(f"{path}: unrecognised file (not a checkpoint, ONNX model or TensorRT engine)", _pass(allowed))


def expect_kind(path: str | os.PathLike, allowed: tuple[str, ...], role: str) -> str:
    """:func:`detect_kind`, refusing kinds this ``role`` (e.g. ``--reference``) cannot use, in one line."""
    kind = detect_kind(path, allowed)
    if kind not in allowed:
        wanted = " or ".join(KIND_WORDS[k] for k in allowed)
        raise ArtifactPathError(f"{path}: is {KIND_WORDS[kind]}, but {role} needs {wanted}")
    return kind


@dataclass(frozen=True)
class ArtifactInfo:
    """Everything the runtime knows about one artifact, whatever its kind.

    ``solver`` is what this artifact computes (the unrolled fixed-step solver of an export, or the
    checkpoint's solver, or the reference override); ``source_solver`` is what the model was trained with.
    """

    path: Path
    kind: str  # checkpoint | onnx | engine
    sha256: str
    classes: list[str]
    input: InputSpec
    precision: str  # fp32 | fp16 | int8
    solver: SolverConfig
    source_solver: SolverConfig
    manifest_sha256: str
    source_checkpoint_sha256: str
    model: dict[str, Any] = field(default_factory=dict)
    int8_target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    verified: bool = False  # a sidecar's sha256 was checked against the file

    @property
    def steps(self) -> int | None:
        """Fixed steps of the ODE block; None for an adaptive solver."""
        return None if self.solver.is_adaptive else self.solver.n_steps

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mirror_average(self) -> bool:
        """Whether each picture is classified together with its mirror image (``export --mirror-average``)."""
        return bool(self.model.get("mirror_average", False))

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> str:
        """One line: ``model-rk4x4-int8.onnx: onnx int8 (ort), rk4 × 4 steps, 6 classes, 64 px``."""
        precision = self.precision + (f" ({self.int8_target})" if self.int8_target else "")
        unverified = " (unverified: no sidecar to check its sha256 against)" if self.kind == "onnx" and not self.verified else ""
        mirror = ", mirror-averaged" if self.mirror_average else ""
        return (f"{self.path.name}{unverified}: {self.kind} {precision}, {self.solver.describe()}{mirror}, "
                f"{self.num_classes} classes, {self.input.describe()}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "sha256": self.sha256,
            "classes": list(self.classes),
            "input": self.input.to_dict(),
            "precision": self.precision,
            "solver": self.solver.to_dict(),
            "source_solver": self.source_solver.to_dict(),
            "steps": self.steps,
            "manifest_sha256": self.manifest_sha256,
            "source_checkpoint_sha256": self.source_checkpoint_sha256,
            "int8_target": self.int8_target,
            "mirror_average": self.mirror_average,
            "verified": self.verified,
        }


def checkpoint_info(ckpt, solver: SolverConfig | None = None, mirror_average: bool = False) -> ArtifactInfo:
    """ArtifactInfo of a loaded :class:`~edgenode.checkpoint.Checkpoint`, optionally with another solver and
    with mirror averaging switched on."""
    trained = ckpt.model_config.solver
    model = replace(ckpt.model_config, mirror_average=True).to_dict() if mirror_average else ckpt.model_config.to_dict()
    return ArtifactInfo(
        path=Path(ckpt.path),
        kind="checkpoint",
        sha256=ckpt.sha256,
        classes=list(ckpt.classes),
        input=ckpt.input_spec,
        precision="fp32",
        solver=solver or trained,
        source_solver=trained,
        manifest_sha256=ckpt.manifest_sha256,
        source_checkpoint_sha256=ckpt.sha256,
        model=model,
        verified=True,  # hashed on load; a checkpoint has no sidecar to disagree with
    )


def _solver_of(record: dict[str, Any], what: str, path: Path) -> SolverConfig:
    try:
        return SolverConfig.from_dict(record)
    except Exception as exc:  # noqa: BLE001 - a malformed record is a damaged artifact, reported in one line
        raise ArtifactError(f"{path}: unreadable {what} in its metadata ({exc})", "re-export the artifact") from None


def _info_from_metadata(meta, path: Path, kind: str, sha256: str, verified: bool) -> ArtifactInfo:
    solver = _solver_of(meta.model.get("solver", {}), "solver", path)
    source = _solver_of(meta.source_solver or meta.model.get("solver", {}), "source solver", path)
    if meta.steps != solver.n_steps and not solver.is_adaptive:
        raise ArtifactError(f"{path}: metadata says {meta.steps} steps but its solver has {solver.n_steps}", "re-export the artifact")
    if not isinstance(meta.model.get("mirror_average", False), bool):
        raise ArtifactError(f"{path}: metadata says mirror_average = {meta.model['mirror_average']!r}, not true or false",
                            "re-export the artifact")
    return ArtifactInfo(
        path=path,
        kind=kind,
        sha256=sha256,
        classes=list(meta.classes),
        input=meta.input,
        precision=meta.precision,
        solver=solver,
        source_solver=source,
        manifest_sha256=meta.manifest_sha256,
        source_checkpoint_sha256=meta.source_checkpoint_sha256,
        model=dict(meta.model),
        int8_target=meta.int8_target,
        extra=dict(meta.extra or {}),
        verified=verified,
    )


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


def onnx_metadata_props(path: Path, data: bytes | None = None) -> dict[str, str]:
    """``metadata_props`` of an ONNX file (or of its bytes ``data``) without external weights; ArtifactError if unparsable."""
    import onnx

    try:
        model = onnx.load_from_string(data) if data is not None else onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends on damaged files
        raise ArtifactError(f"{path}: damaged ONNX file ({str(exc).strip()[:120] or type(exc).__name__})",
                            "re-export or copy it again") from None
    if not model.graph.node:
        raise ArtifactError(f"{path}: not an ONNX model (no graph)", "pass the .onnx written by `edgenode export`")
    return {p.key: p.value for p in model.metadata_props}


def onnx_info(path: str | os.PathLike, data: bytes | None = None) -> ArtifactInfo:
    """Metadata of an ONNX artifact: ``metadata_props``, cross-checked with the sidecar (sha256 verified) if any.

    The sha256 is checked before the file is parsed, so a damaged file is reported as "modified" rather
    than as whatever parse error the damage happens to cause. With ``data`` (the file's bytes, read once by
    the caller that will run them) the hash and the metadata are those of exactly the bytes that run.
    """
    return read_onnx_metadata(path, data)[1]


def read_onnx_metadata(path: str | os.PathLike, data: bytes | None = None) -> tuple[Any, ArtifactInfo]:
    """An ONNX artifact's metadata both as stored (the ArtifactMetadata an engine built from it carries on) and as
    the runtime reads it (:func:`onnx_info`), checked as that function says."""
    from edgenode.export.metadata import ArtifactMetadata

    path = Path(path)
    record = read_sidecar(path, verify=True, data=data) if sidecar_path(path).is_file() else None
    props = onnx_metadata_props(path, data)
    try:
        inside = ArtifactMetadata.from_onnx_props(props, source=str(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: damaged edgenode metadata in the ONNX file ({exc.__class__.__name__})",
                            "re-export the artifact") from None
    if record is None:
        digest = sha256_bytes(data) if data is not None else sha256_file(path)
        return inside, _info_from_metadata(inside, path, "onnx", digest, verified=False)
    beside = ArtifactMetadata.from_dict(record, str(sidecar_path(path)))
    differ = _differences(inside.to_dict(), beside.to_dict())
    if differ:
        raise ArtifactError(
            f"{path}: its metadata_props and its sidecar {sidecar_path(path).name} disagree on {', '.join(differ)}",
            "one of them was edited or is stale; re-export the artifact",
        )
    return inside, _info_from_metadata(inside, path, "onnx", record["sha256"], verified=True)


def engine_info(path: str | os.PathLike, data: bytes | None = None) -> ArtifactInfo:
    """Metadata of a TensorRT engine: its sidecar is required (a plain engine carries none) and verified
    (against ``data``, the file's bytes, when the caller read them to run them)."""
    from edgenode.export.metadata import ArtifactMetadata

    path = Path(path)
    if not sidecar_path(path).is_file():
        raise ArtifactError(f"{path}: TensorRT engine without its metadata sidecar {sidecar_path(path).name}",
                            "copy the .json written beside it by `edgenode export`")
    record = read_sidecar(path, verify=True, data=data)
    meta = ArtifactMetadata.from_dict(record, str(sidecar_path(path)))
    return _info_from_metadata(meta, path, "engine", record["sha256"], True)


def find_artifacts(folder: str | os.PathLike) -> list[Path]:
    """ONNX files and TensorRT engines directly inside ``folder`` (sorted; sidecars and temporaries skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "folder not found"
        raise ArtifactPathError(f"{folder}: {what}", "pass the folder `edgenode export` wrote")
    found = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in ONNX_EXTENSIONS | ENGINE_EXTENSIONS]
    return sorted(found, key=lambda p: p.name)


def expand_artifacts(paths: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> list[tuple[Path, bool]]:
    """Files as given, folders as the ONNX files and engines inside them: ``(path, came_from_folder)``.

    Each file once, in the order given; paths in ``exclude`` (e.g. the reference checkpoint) are left out.
    """
    out: list[tuple[Path, bool]] = []
    seen = {Path(p).resolve() for p in exclude}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = find_artifacts(path)
            if not found:
                raise ArtifactError(f"{path}: no .onnx or .engine files in this folder", "pass the folder `edgenode export` wrote")
            items = [(p, True) for p in found]
        else:
            items = [(path, False)]
        for item in items:
            key = item[0].resolve()
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out
