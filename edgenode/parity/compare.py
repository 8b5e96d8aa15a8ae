"""Comparisons as values that judge themselves (Polygraphy's ``OutputCompareResult`` shape).

:func:`compare_logits` turns reference and candidate logits on one labelled split into a
:class:`ParityResult`: label-free accuracy of both (95 % Wilson intervals), accuracy difference, top-1
agreement, logit and probability errors, inf/NaN count and the classes whose accuracy moved. The result's
``bool`` is its verdict against :class:`ParityThresholds`, and it says the tightest thresholds it would still
pass (``min_passing``), so a failure tells you how far off it is, not only that it is.

Accuracy differences are computed from integer counts, so "no change" is exactly 0.0 pt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgenode.errors import UsageError
from edgenode.metrics import wilson_interval

_EPS = 1e-9


@dataclass(frozen=True)
class ParityThresholds:
    """Pass criteria per precision: accuracy may drop at most ``*_max_drop_pt`` percentage points and the
    top-1 agreement with the reference must be at least ``*_min_agreement_pct`` percent.

    INT8 gets its own pair: quantisation legitimately moves near-tie decisions, so a deployment that wants
    the same accuracy budget can still accept a few flipped top-1s.
    """

    max_drop_pt: float = 0.5
    min_agreement_pct: float = 99.0
    int8_max_drop_pt: float = 1.0
    int8_min_agreement_pct: float = 97.0
    max_logit_error: float | None = None  # optional bound on max |Δlogit| (any precision); None: not checked

    def __post_init__(self):
        if self.max_logit_error is not None and not self.max_logit_error >= 0:
            raise UsageError(f"--max-logit-error must be >= 0, got {self.max_logit_error}")
        for name, flag in (("max_drop_pt", "--max-drop"), ("int8_max_drop_pt", "--int8-max-drop")):
            if not getattr(self, name) >= 0:
                raise UsageError(f"{flag} must be >= 0 percentage points, got {getattr(self, name)}", f"pass e.g. {flag} 1")
        for name, flag in (("min_agreement_pct", "--min-agreement"), ("int8_min_agreement_pct", "--int8-min-agreement")):
            if not 0 <= getattr(self, name) <= 100:
                raise UsageError(f"{flag} must be a percentage in [0, 100], got {getattr(self, name)}")

    def for_precision(self, precision: str) -> tuple[float, float]:
        """(max accuracy drop in pt, min agreement in %) for an artifact of ``precision``."""
        if precision == "int8":
            return self.int8_max_drop_pt, self.int8_min_agreement_pct
        return self.max_drop_pt, self.min_agreement_pct

    def to_dict(self) -> dict[str, float]:
        return {"max_drop_pt": self.max_drop_pt, "min_agreement_pct": self.min_agreement_pct,
                "int8_max_drop_pt": self.int8_max_drop_pt, "int8_min_agreement_pct": self.int8_min_agreement_pct,
                "max_logit_error": self.max_logit_error}


@dataclass(frozen=True)
class ClassChange:
    """A class whose label-free accuracy differs between reference and candidate."""

    name: str
    n: int
    reference_accuracy: float
    accuracy: float

    @property
    def delta_pt(self) -> float:
        return 100.0 * (self.accuracy - self.reference_accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, "n": self.n, "reference_accuracy": self.reference_accuracy,
                "accuracy": self.accuracy, "delta_pt": self.delta_pt}


@dataclass(frozen=True)
class LogitDiff:
    """How far apart two sets of logits are on the same inputs (no labels needed)."""

    n: int
    agreement: float  # fraction of samples with the same top-1
    max_abs_logit_error: float
    mean_abs_logit_error: float
    max_abs_prob_error: float
    mean_abs_prob_error: float
    nonfinite: int  # samples whose candidate logits hold inf or NaN

    @property
    def agreement_pct(self) -> float:
        return 100.0 * self.agreement

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "agreement": self.agreement, "max_abs_logit_error": self.max_abs_logit_error,
                "mean_abs_logit_error": self.mean_abs_logit_error, "max_abs_prob_error": self.max_abs_prob_error,
                "mean_abs_prob_error": self.mean_abs_prob_error, "nonfinite": self.nonfinite}


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def diff_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitDiff:
    """Top-1 agreement and max/mean absolute logit and softmax-probability errors; non-finite rows counted
    (and counted as disagreeing), the error statistics taken over the finite rows."""
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ValueError(f"logits shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    n = reference.shape[0]
    finite = np.isfinite(candidate).all(axis=1)
    agree = (reference.argmax(axis=1) == candidate.argmax(axis=1)) & finite
    if finite.any():
        ref, cand = reference[finite], candidate[finite]
        logit_err = np.abs(ref.astype(np.float64) - cand)
        prob_err = np.abs(_softmax64(ref) - _softmax64(cand))
        stats = (float(logit_err.max()), float(logit_err.mean()), float(prob_err.max()), float(prob_err.mean()))
    else:
        stats = (float("inf"), float("inf"), 1.0, 1.0) if n else (0.0, 0.0, 0.0, 0.0)
    return LogitDiff(n, float(agree.mean()) if n else 1.0, *stats, nonfinite=int((~finite).sum()))


@dataclass(frozen=True)
class StageDiff:
    """One stage of the error attribution: ``a`` vs. ``b``, or n/a with the reason."""

    stage: str  # solver | export | precision | runtime | total
    a: str
    b: str
    diff: LogitDiff | None = None
    reason: str | None = None  # why the stage is n/a

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "a": self.a, "b": self.b,
                "diff": self.diff.to_dict() if self.diff else None, "reason": self.reason}


@dataclass(frozen=True)
class ParityResult:
    """One artifact against the reference on one split; ``bool(result)`` is the verdict."""

    name: str
    path: str
    kind: str
    precision: str
    steps: int | None
    size_bytes: int
    runtime: str  # e.g. "onnxruntime (CPUExecutionProvider)"
    n: int
    reference_correct: int
    correct: int
    diff: LogitDiff
    max_drop_pt: float
    min_agreement_pct: float
    max_logit_error: float | None = None
    class_changes: list[ClassChange] = field(default_factory=list)
    attribution: list[StageDiff] = field(default_factory=list)
    int8_target: str | None = None
    latency_ms_per_image: float | None = None
    notes: list[str] = field(default_factory=list)
    numeric: str | None = None  # inf/NaN or saturated logits, with the node where it starts (edgenode.export.numerics)
    other_checkpoint: str | None = None  # exported from another checkpoint than the reference's, not allowed
    # per-sample arrays for the plots; not part of the JSON record
    reference_pred: np.ndarray | None = field(default=None, repr=False, compare=False)
    pred: np.ndarray | None = field(default=None, repr=False, compare=False)
    abs_logit_error: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def reference_accuracy(self) -> float:
        return self.reference_correct / self.n if self.n else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def reference_ci(self) -> tuple[float, float]:
        return wilson_interval(self.reference_correct, self.n)

    @property
    def accuracy_ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def accuracy_delta_pt(self) -> float:
        """Candidate minus reference accuracy in percentage points (negative: the artifact is worse)."""
        return 100.0 * (self.correct - self.reference_correct) / self.n if self.n else 0.0

    @property
    def accuracy_drop_pt(self) -> float:
        return -self.accuracy_delta_pt

    def failures(self) -> list[str]:
        """Why it fails, one phrase per criterion (empty when it passes)."""
        reasons = [self.other_checkpoint] if self.other_checkpoint else []
        if self.numeric:
            reasons.append(self.numeric)
        elif self.diff.nonfinite:
            reasons.append(f"{self.diff.nonfinite} sample(s) with inf/NaN logits")
        if self.accuracy_drop_pt > self.max_drop_pt + _EPS:
            reasons.append(f"accuracy drop {self.accuracy_drop_pt:.2f} pt > {self.max_drop_pt:g} pt")
        if self.diff.agreement_pct < self.min_agreement_pct - _EPS:
            reasons.append(f"agreement {self.diff.agreement_pct:.2f} % < {self.min_agreement_pct:g} %")
        if self.max_logit_error is not None and not self.diff.max_abs_logit_error <= self.max_logit_error:
            reasons.append(f"max |Δlogit| {self.diff.max_abs_logit_error:.3g} > {self.max_logit_error:g}")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures()

    def __bool__(self) -> bool:
        return self.passed

    @property
    def min_passing(self) -> dict[str, float]:
        """The tightest thresholds this result still passes (inf/NaN fail at any threshold)."""
        return {"max_drop_pt": max(0.0, self.accuracy_drop_pt), "min_agreement_pct": self.diff.agreement_pct,
                "max_logit_error": self.diff.max_abs_logit_error}

    @property
    def verdict(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "kind": self.kind, "precision": self.precision,
            "int8_target": self.int8_target, "steps": self.steps, "size_bytes": self.size_bytes,
            "runtime": self.runtime, "n": self.n,
            "reference_accuracy": self.reference_accuracy, "reference_accuracy_ci": list(self.reference_ci),
            "accuracy": self.accuracy, "accuracy_ci": list(self.accuracy_ci),
            "accuracy_delta_pt": self.accuracy_delta_pt, **self.diff.to_dict(),
            "thresholds": {"max_drop_pt": self.max_drop_pt, "min_agreement_pct": self.min_agreement_pct,
                           "max_logit_error": self.max_logit_error},
            "min_passing": self.min_passing, "passed": self.passed, "failures": self.failures(),
            "class_changes": [c.to_dict() for c in self.class_changes],
            "attribution": [s.to_dict() for s in self.attribution],
            "latency_ms_per_image": self.latency_ms_per_image, "notes": list(self.notes), "numeric": self.numeric,
            "other_checkpoint": self.other_checkpoint,
        }


def class_changes(ref_pred: np.ndarray, pred: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> list[ClassChange]:
    changes = []
    for c, name in enumerate(classes):
        mask = labels == c
        n = int(mask.sum())
        if not n:
            continue
        ref_ok, ok = int((ref_pred[mask] == c).sum()), int((pred[mask] == c).sum())
        if ref_ok != ok:
            changes.append(ClassChange(name, n, ref_ok / n, ok / n))
    return sorted(changes, key=lambda ch: (ch.delta_pt, ch.name))


def compare_logits(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, classes: Sequence[str], *,
                   name: str, path: str = "", kind: str = "onnx", precision: str = "fp32", steps: int | None = None,
                   size_bytes: int = 0, runtime: str = "", thresholds: ParityThresholds = ParityThresholds(),
                   int8_target: str | None = None, attribution: Sequence[StageDiff] = (),
                   latency_ms_per_image: float | None = None, notes: Sequence[str] = (),
                   numeric: str | None = None, other_checkpoint: str | None = None) -> ParityResult:
    """Judge ``candidate`` logits against ``reference`` logits on labelled samples (labels only score accuracy)."""
    labels = np.asarray(labels).reshape(-1)
    diff = diff_logits(reference, candidate)
    if len(labels) != diff.n:
        raise ValueError(f"{len(labels)} labels for {diff.n} samples")
    ref_pred = np.asarray(reference).argmax(axis=1)
    finite = np.isfinite(candidate).all(axis=1)
    pred = np.where(finite, np.nan_to_num(np.asarray(candidate, dtype=np.float64)).argmax(axis=1), -1)  # inf/NaN rows count as wrong
    max_drop, min_agreement = thresholds.for_precision(precision)
    err = np.abs(np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64))
    return ParityResult(
        name=name, path=path, kind=kind, precision=precision, steps=steps, size_bytes=size_bytes, runtime=runtime,
        n=diff.n, reference_correct=int((ref_pred == labels).sum()), correct=int((pred == labels).sum()), diff=diff,
        max_drop_pt=max_drop, min_agreement_pct=min_agreement, max_logit_error=thresholds.max_logit_error, class_changes=class_changes(ref_pred, pred, labels, classes),
        attribution=list(attribution), int8_target=int8_target, latency_ms_per_image=latency_ms_per_image,
        notes=list(notes), numeric=numeric, other_checkpoint=other_checkpoint, reference_pred=ref_pred, pred=pred, abs_logit_error=err[np.isfinite(err)],
    )
