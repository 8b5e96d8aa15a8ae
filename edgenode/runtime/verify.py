"""On-device self-check without a data set: replay each artifact's golden inputs and compare the logits.

``edgenode export`` writes ``<artifact>.golden.npz`` beside each artifact: ``inputs`` (normalised float32
NCHW), ``logits`` (ONNX Runtime CPU output on the export machine) and ``reference_logits`` (torch FP32). On
the device, :func:`verify_folder` loads every artifact that has one with whatever runtime is there (auto
provider), runs ``inputs`` and compares with the stored ``logits``. A TensorRT engine, built on the device
(``edgenode engine``), is checked against the golden file of the ONNX file it was built from.

Tolerances (per precision; ``scale`` is the largest |stored logit| of each sample, so the check is
independent of how large a model's logits are)::

    precision  |replay - stored| <= atol + rtol * scale    top-1 must agree
    fp32       atol 1e-3,  rtol 1e-3                       on decisive samples
    fp16       atol 2e-2,  rtol 2e-2                       on decisive samples
    int8       atol 0.25,  rtol 0.10                       on decisive samples

FP32 is tight: any real change to weights, graph or pre-processing shows up far above it, yet it leaves
room for another CPU's or GPU's kernels (a GPU provider using TF32 may need ``--rtol``). FP16 replays on a
GPU accumulate differently from the CPU that wrote the golden file. INT8 rounding can differ by one
quantisation step between runtimes, so its logit tolerance is loose and top-1 agreement is the real check.
A sample is *decisive* when its stored top-1 beats the runner-up by more than twice the tolerance: only
then is a flipped top-1 evidence of a fault rather than of a legitimate near-tie.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenode.errors import EdgenodeError, UsageError, first_line
from edgenode.runtime.artifact import find_artifacts, golden_path
from edgenode.runtime.providers import ProviderUnavailableError, check_provider


@dataclass(frozen=True)
class GoldenTolerance:
    atol: float
    rtol: float

    def __post_init__(self):
        """Each tolerance must be a finite number >= 0: with NaN every comparison is False, so no error ever
        exceeds it, and with inf nothing can; either would pass any artifact, however wrong its logits."""
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            try:
                usable = not isinstance(value, bool) and math.isfinite(value) and value >= 0
            except TypeError:
                usable = False
            if not usable:
                raise UsageError(f"--{name} {value!r}: tolerances must be >= 0 and finite",
                                 f"pass e.g. --{name} 0.001, or leave it out for each precision's default")


DEFAULT_TOLERANCES = {
    "fp32": GoldenTolerance(1e-3, 1e-3),
    "fp16": GoldenTolerance(2e-2, 2e-2),
    "int8": GoldenTolerance(0.25, 0.10),
}


@dataclass(frozen=True)
class GoldenCheck:
    """One artifact's replay; ``bool`` is pass. ``status`` is passed | failed | skipped (runtime missing)."""

    artifact: str
    precision: str | None
    status: str
    runtime: str | None = None
    n: int = 0
    max_abs_error: float | None = None
    max_excess: float | None = None  # worst |Δ| minus its allowance (<= 0 passes)
    min_passing_atol: float | None = None  # the smallest atol (with this rtol) that passes the logit check
    top1_agreement: float | None = None
    decisive: int = 0
    flipped: int = 0  # decisive samples whose top-1 changed
    tolerance: GoldenTolerance | None = None
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("artifact", "precision", "status", "runtime", "n", "max_abs_error",
                                              "max_excess", "min_passing_atol", "top1_agreement", "decisive", "flipped", "reason")}
        out["tolerance"] = None if self.tolerance is None else {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol}
        return out


@dataclass
class VerifyReport:
    folder: str
    checks: list[GoldenCheck] = field(default_factory=list)
    without_golden: list[str] = field(default_factory=list)

    @property
    def n_passed(self) -> int:
        return sum(1 for c in self.checks if c.passed)

    @property
    def n_failed(self) -> int:
        return sum(1 for c in self.checks if c.status == "failed")

    @property
    def passed(self) -> bool:
        """No failure and at least one artifact actually verified."""
        return self.n_failed == 0 and self.n_passed > 0

    def __bool__(self) -> bool:
        return self.passed

    def summary_line(self) -> str:
        skipped = sum(1 for c in self.checks if c.status == "skipped")
        return (f"golden replay in {self.folder} | Passed: {self.n_passed}/{self.n_passed + self.n_failed}"
                + (f" | skipped {skipped}" if skipped else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "without_golden": self.without_golden}


def load_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 NCHW, logits float32 N x C) of a golden file, or EdgenodeError saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            inputs, logits = np.asarray(archive["inputs"]), np.asarray(archive["logits"])
    except KeyError as exc:
        raise EdgenodeError(f"{path}: golden file lacks the array {exc}", "re-export the artifact") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise EdgenodeError(f"{path}: unreadable golden file ({str(exc)[:120]})", "re-export or copy it again") from None
    if inputs.ndim != 4 or logits.ndim != 2 or len(inputs) != len(logits):
        raise EdgenodeError(f"{path}: golden arrays have inconsistent shapes {inputs.shape} and {logits.shape}",
                            "re-export the artifact, or copy its .golden.npz again")
    if not (np.isfinite(inputs).all() and np.isfinite(logits).all()):  # a NaN in the stored logits passed every check
        raise EdgenodeError(f"{path}: golden file holds inf/NaN", "re-export the artifact, or copy its .golden.npz again")
    return inputs.astype(np.float32), logits.astype(np.float32)


def compare_golden(stored: np.ndarray, replay: np.ndarray, tolerance: GoldenTolerance) -> dict[str, Any]:
    """The numbers of a golden comparison (pure): errors, allowance excess, top-1 agreement on decisive samples."""
    stored = np.asarray(stored, dtype=np.float64)
    replay = np.asarray(replay, dtype=np.float64)
    if stored.shape != replay.shape:
        return {"ok": False, "reason": f"replay gives logits {replay.shape}, golden has {stored.shape}"}
    if not np.isfinite(replay).all():
        return {"ok": False, "reason": f"{int((~np.isfinite(replay).all(axis=1)).sum())} sample(s) give inf/NaN logits"}
    scale = np.abs(stored).max(axis=1, keepdims=True)
    allowed = tolerance.atol + tolerance.rtol * scale
    err = np.abs(replay - stored)
    ranked = np.sort(stored, axis=1)
    margin = ranked[:, -1] - ranked[:, -2] if stored.shape[1] > 1 else np.full(len(stored), np.inf)
    decisive = margin > 2 * allowed[:, 0]
    agree = stored.argmax(axis=1) == replay.argmax(axis=1)
    flipped = int((decisive & ~agree).sum())
    excess = float((err - allowed).max()) if err.size else 0.0
    min_atol = float(max(0.0, (err - tolerance.rtol * scale).max())) if err.size else 0.0
    reasons = []
    if excess > 0:
        reasons.append(f"max |Δlogit| {float(err.max()):.3g} exceeds atol {tolerance.atol:g} + rtol {tolerance.rtol:g}·|logit| "
                       f"(would pass with atol ≥ {min_atol:.3g})")
    if flipped:
        reasons.append(f"top-1 changed on {flipped} of {int(decisive.sum())} decisive sample(s)")
    return {"ok": not reasons, "reason": "; ".join(reasons) or None, "max_abs_error": float(err.max()) if err.size else 0.0,
            "max_excess": excess, "min_passing_atol": min_atol, "top1_agreement": float(agree.mean()) if len(agree) else 1.0,
            "decisive": int(decisive.sum()), "flipped": flipped}


def golden_for(artifact: str | os.PathLike) -> Path | None:
    """The golden file that ``artifact`` is checked against, or None when it has none.

    An artifact's own ``<artifact>.golden.npz``; for a TensorRT engine, which is built on the device and so
    has none of its own, the golden file of the ONNX file it was built from (named in its sidecar), provided
    that file is still the one it was built from (same sha256): a re-exported ONNX file's golden logits say
    nothing about an engine of the old one (EdgenodeError naming both).
    """
    from edgenode.artifacts import read_sidecar, sha256_file, sidecar_path
    from edgenode.runtime.artifact import ENGINE_EXTENSIONS

    artifact = Path(artifact)
    if golden_path(artifact).is_file():
        return golden_path(artifact)
    if artifact.suffix.lower() not in ENGINE_EXTENSIONS or not sidecar_path(artifact).is_file():
        return None
    record = read_sidecar(artifact, verify=False)  # the engine's own sha256 is checked when it is loaded
    extra = record.get("extra") if isinstance(record, dict) else None
    if not isinstance(extra, dict):
        raise EdgenodeError(f"{sidecar_path(artifact)}: not an engine's metadata sidecar", "copy the .json `edgenode engine` wrote")
    source = extra.get("golden_logits_from") or extra.get("built_from")
    if not source or not golden_path(artifact.parent / source).is_file() or not (artifact.parent / source).is_file():
        return None
    actual, built = sha256_file(artifact.parent / source), str(extra.get("built_from_sha256"))
    if actual != built:
        raise EdgenodeError(f"{artifact}: built from another {source} (sha256 {built[:12]}…; the file here is {actual[:12]}…)",
                            f"rebuild it: edgenode engine {artifact.parent / source}")
    return golden_path(artifact.parent / source)


def _recorded_precision(path: Path) -> str | None:
    """The precision an artifact's sidecar records, for the row of a file this machine cannot run (None: unknown)."""
    from edgenode.artifacts import read_sidecar

    try:
        precision = read_sidecar(path, verify=False).get("precision")
    except (EdgenodeError, OSError, ValueError):
        return None
    return precision if isinstance(precision, str) else None


def verify_artifact(path: str | os.PathLike, provider: str = "auto", tolerances: dict[str, GoldenTolerance] | None = None,
                    golden: Path | None = None) -> GoldenCheck:
    """Replay one artifact's golden file (``golden``, else :func:`golden_for`'s); never raises for a bad artifact
    (that is a failed check)."""
    from edgenode.runtime.predictor import load_predictor

    from edgenode.runtime.artifact import ENGINE_EXTENSIONS

    path = Path(path)
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if path.suffix.lower() in ENGINE_EXTENSIONS and check_provider(provider) not in ("auto", "tensorrt"):
        return GoldenCheck(path.name, _recorded_precision(path), "skipped",
                           reason=f"a TensorRT engine runs on TensorRT only, not on provider {provider!r}")
    try:
        golden = golden or golden_for(path)
        if golden is None:
            raise EdgenodeError(f"{path}: no golden file to replay", "pass an artifact `edgenode export` wrote, with its .golden.npz")
        inputs, stored = load_golden(golden)
        predictor = load_predictor(path, provider=provider)
    except ProviderUnavailableError as exc:
        return GoldenCheck(path.name, _recorded_precision(path), "skipped", reason=str(exc))
    except EdgenodeError as exc:
        return GoldenCheck(path.name, None, "failed", reason=str(exc))
    info = predictor.metadata
    tolerance = tolerances[info.precision]
    try:
        replay = predictor.predict_logits(inputs)
    except Exception as exc:  # ONNX Runtime's and TensorRT's own errors too: a failed check, and the next file is checked
        reason = str(exc) if isinstance(exc, EdgenodeError) else f"{type(exc).__name__}: {first_line(exc)}"
        return GoldenCheck(path.name, info.precision, "failed", predictor.runner.describe(), len(inputs),
                           tolerance=tolerance, reason=reason)
    finally:
        predictor.close()
    result = compare_golden(stored, replay, tolerance)
    if "max_abs_error" not in result:
        return GoldenCheck(path.name, info.precision, "failed", predictor.runner.describe(), len(inputs),
                           tolerance=tolerance, reason=result["reason"])
    reason = result["reason"]
    if info.kind == "onnx" and not info.verified:  # the replay checks what it computes; nothing checked its bytes
        reason = "; ".join(filter(None, [reason, "no sidecar: its sha256 was not checked, only its replay"]))
    return GoldenCheck(
        path.name, info.precision, "passed" if result["ok"] else "failed", predictor.runner.describe(), len(inputs),
        result["max_abs_error"], result["max_excess"], result["min_passing_atol"], result["top1_agreement"],
        result["decisive"], result["flipped"], tolerance, reason,
    )


def verify_folder(folder: str | os.PathLike, provider: str = "auto",
                  tolerances: dict[str, GoldenTolerance] | None = None) -> VerifyReport:
    """Replay every artifact in ``folder`` that has a golden file (see the module docstring for tolerances)."""
    folder = Path(folder)
    check_provider(provider)  # a typo is a bad argument (exit 2), not a failed check of every artifact
    report = VerifyReport(str(folder))
    for artifact in find_artifacts(folder):
        try:
            golden = golden_for(artifact)
        except EdgenodeError as exc:
            report.checks.append(GoldenCheck(artifact.name, None, "failed", reason=str(exc)))
            continue
        if golden is not None:
            report.checks.append(verify_artifact(artifact, provider, tolerances, golden))
        else:
            report.without_golden.append(artifact.name)
    if not report.checks:
        raise EdgenodeError(f"{folder}: no artifact with a golden file (<artifact>.golden.npz) to replay",
                            "pass the folder `edgenode export` wrote, with its .golden.npz files")
    return report
