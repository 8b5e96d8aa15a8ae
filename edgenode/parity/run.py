"""``run_parity(ParityConfig) -> ParityReport``: deployed artifacts against the adaptive-solver model.

The reference is the training checkpoint integrated with an adaptive solver at tight tolerance (dopri5,
rtol = atol = 1e-6 by default): that is the ODE the network defines, whatever solver it was trained or
exported with, so every discretisation and precision error of a deployment is measured against it. The
split comes from the run's manifest, whose sha256 must be the one the checkpoint was trained on; each
artifact must carry the same manifest hash, classes and input pre-processing, or it is refused with what
differs — comparing against another split or another pre-processing would measure nothing. An artifact
exported from another checkpoint (same split, another seed or epoch) fails parity, naming both sha256
prefixes, unless ``allow_other_reference`` (``--allow-other-reference``) says the comparison is deliberate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from edgenode.console import console
from edgenode.data.manifest import check_split_option, manifest_of_run
from edgenode.errors import ArtifactError, EdgenodeError, UsageError, first_line
from edgenode.ode.solvers import SolverConfig
from edgenode.parity.attribution import Attributor
from edgenode.parity.compare import ParityResult, ParityThresholds, compare_logits
from edgenode.runtime.artifact import ArtifactInfo, expand_artifacts, expect_kind
from edgenode.runtime.predictor import Predictor, load_predictor
from edgenode.runtime.providers import ProviderUnavailableError

DEFAULT_REFERENCE_SOLVER = SolverConfig("dopri5", rtol=1e-6, atol=1e-6)
_REFERENCE_CACHE: dict[tuple, np.ndarray] = {}  # tight adaptive solves are the slow part: memoised per process
_REFERENCE_CACHE_SIZE = 4


@dataclass(frozen=True)
class ParityConfig:
    """What to compare, on which data, judged how. ``reference_solver=None`` keeps the trained solver."""

    artifacts: tuple[str, ...]
    reference: str
    data: str
    manifest: str | None = None
    split: str = "test"
    out: str | None = None
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    reference_solver: SolverConfig | None = DEFAULT_REFERENCE_SOLVER
    provider: str = "auto"
    batch_size: int = 64
    attribution: bool = True
    allow_other_reference: bool = False  # compare artifacts exported from another checkpoint, on purpose

    def __post_init__(self):
        if not self.artifacts:
            raise UsageError("no artifact to compare", "pass one or more .onnx/.engine files or an export folder")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_split_option(self.split)


@dataclass
class ParityReport:
    reference: dict[str, Any]
    data: dict[str, Any]
    thresholds: ParityThresholds
    results: list[ParityResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (artifact, why it was not compared)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def n_passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def passed(self) -> bool:
        return bool(self.results) and self.n_passed == len(self.results)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failing(self) -> list[ParityResult]:
        return [r for r in self.results if not r]

    def failure_line(self) -> str:
        """Which artifacts fail and why, in one line: the message of the error `parity` and `demo` end with."""
        detail = "; ".join(f"{r.name}: {', '.join(r.failures())}" for r in self.failing)
        return f"{len(self.failing)} of {len(self.results)} artifact(s) fail parity — {detail}"

    def summary_line(self) -> str:
        """Polygraphy's one-liner: ``best.pt [dopri5 …] vs. 3 artifacts | Passed: 2/3``."""
        what = self.results[0].name if len(self.results) == 1 else f"{len(self.results)} artifacts"
        return (f"{Path(self.reference['path']).name} [{self.reference['solver']}] vs. {what} | "
                f"Passed: {self.n_passed}/{len(self.results)}" + (f" | skipped {len(self.skipped)}" if self.skipped else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "data": self.data, "thresholds": self.thresholds.to_dict(),
            "passed": self.passed, "n_passed": self.n_passed, "n_compared": len(self.results),
            "results": [r.to_dict() for r in self.results],
            "skipped": [{"artifact": a, "reason": why} for a, why in self.skipped], "notes": list(self.notes),
        }


def check_compatible(info: ArtifactInfo, reference: ArtifactInfo) -> None:
    """Refuse (ArtifactError) an artifact made for another split, class list or pre-processing (where it came
    from is :func:`provenance`'s to judge)."""
    differ = []
    if info.manifest_sha256 != reference.manifest_sha256:
        differ.append(f"manifest {info.manifest_sha256[:12]}… vs. {reference.manifest_sha256[:12]}…")
    if list(info.classes) != list(reference.classes):
        differ.append(f"classes ({len(info.classes)} vs. {len(reference.classes)}"
                      + (", same number but other names/order)" if len(info.classes) == len(reference.classes) else ")"))
    differ += info.input.mismatches(reference.input)
    if differ:
        raise ArtifactError(f"{info.path}: does not match the reference {reference.path.name}: {'; '.join(differ)}",
                            "compare artifacts exported from this checkpoint's run")


def other_checkpoint(info: ArtifactInfo, reference: ArtifactInfo) -> str | None:
    """Why ``info`` is not an export of the reference checkpoint itself, or None when it is.

    Another checkpoint of the same split and classes (another seed, another epoch) passes every input check
    and its logits differ by a model's worth, not an export's: parity would measure two models against each
    other and could even "pass". The sha256 prefixes let the user find the right file."""
    if info.source_checkpoint_sha256 == reference.sha256:
        return None
    return (f"exported from checkpoint {info.source_checkpoint_sha256[:12]}…, not from the reference "
            f"{reference.path.name} ({reference.sha256[:12]}…)")


def refuse_other_sources(infos: list[ArtifactInfo], reference: ArtifactInfo, skipped: int = 0) -> None:
    """Refuse, before an image is read or an ODE solved, a run where no artifact is an export of the reference
    checkpoint: most likely the wrong ``--reference``. (Where some are, each of the others fails on its own row;
    so does every one when files were ``skipped``: an engine that cannot run here may be the reference's.)"""
    sources = {info.source_checkpoint_sha256 for info in infos}
    if not infos or skipped or reference.sha256 in sources:
        return
    names = ", ".join(info.path.name for info in infos[:3]) + (", …" if len(infos) > 3 else "")
    what = f"{names} was not" if len(infos) == 1 else f"none of the {len(infos)} artifacts ({names}) was"
    raise UsageError(f"{reference.path}: {what} exported from this checkpoint (sha256 {reference.sha256[:12]}…) "
                     f"but from {', '.join(f'{s[:12]}…' for s in sorted(sources))}",
                     "pass that checkpoint as --reference (`sha256sum` names it), or --allow-other-reference to "
                     "compare two models on purpose")


def provenance(info: ArtifactInfo, reference: ArtifactInfo, allow_other: bool) -> tuple[list[str], str | None]:
    """(notes, failure) for where the artifact came from: an export of another checkpoint fails parity unless
    ``allow_other`` (then one ``warning:`` line and a note), so comparing the wrong pair is never silent."""
    other = other_checkpoint(info, reference)
    if other is None:
        return [], None
    if not allow_other:
        return [], other
    console.print(f"[bold yellow]warning:[/] {escape(info.path.name)}: {escape(other)}; "
                  "compared anyway (--allow-other-reference): the differences include the two models'", soft_wrap=True)
    return [f"{other}; compared on purpose (--allow-other-reference)"], None


def run_logits(predictor: Predictor, x: np.ndarray, batch_size: int, description: str = "") -> tuple[np.ndarray, float]:
    """Logits of the whole split in batches, and the mean inference time per image (ms) — without the first batch
    when there are others: it pays for the warm-up (and, on ONNX Runtime's TensorRT provider, the engine build).

    A runtime's own error (ONNX Runtime's, TensorRT's) becomes one line naming the file. With a ``description``, a
    progress bar on a terminal: the tight dopri5 reference takes minutes on a CPU."""
    from edgenode.console import progress_bar

    parts, times = [], []
    with progress_bar(description, len(x), enabled=bool(description)) as advance:
        for lo in range(0, len(x), batch_size):
            try:
                parts.append(predictor.predict_logits(x[lo : lo + batch_size]))
            except EdgenodeError:
                raise
            except Exception as exc:
                raise ArtifactError(f"{predictor.metadata.path}: failed on {predictor.runner.describe()} "
                                    f"({type(exc).__name__}: {first_line(exc)})",
                                    "check it with `edgenode verify`, or export it again") from None
            times.append((predictor.last_inference_ms, len(parts[-1])))
            advance(len(parts[-1]))
    logits = np.concatenate(parts) if parts else np.zeros((0, predictor.metadata.num_classes), np.float32)
    timed = times[1:] if len(times) > 1 else times
    return logits, sum(ms for ms, _ in timed) / max(1, sum(n for _, n in timed))


def reference_logits(reference: Predictor, x: np.ndarray, config: ParityConfig, manifest_sha256: str) -> np.ndarray:
    """The reference's logits on the split, memoised on everything they depend on (checkpoint and manifest by
    sha256, solver, split, data folder, batch size, device) so repeated parity runs in one process — a
    demo, a notebook, a test suite — solve the tight adaptive ODE once."""
    info = reference.metadata
    key = (info.sha256, info.solver, info.mirror_average, manifest_sha256, config.split, str(Path(config.data).resolve()),
           config.batch_size, reference.runner.describe(), x.shape)
    if key not in _REFERENCE_CACHE:
        logits, _ = run_logits(reference, x, config.batch_size, f"reference ({reference.metadata.solver.describe()})")
        logits.setflags(write=False)
        while len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[key] = logits
    return _REFERENCE_CACHE[key]


def load_candidates(candidates: list[tuple[Path, bool]], reference: ArtifactInfo, provider: str,
                    stack: contextlib.ExitStack) -> tuple[list[Predictor], list[tuple[str, str]]]:
    """Open every artifact and check it against the reference *before* any expensive solve, so a tampered
    or mismatched file fails in a second. Engines from a folder that cannot run here are skipped.
    (Another source checkpoint beside an export of the reference is judged later, by :func:`provenance`, so its
    numbers are still reported; :func:`refuse_other_sources` stops a run where every artifact has another.)
    Each one is closed by ``stack``, also when a later one fails: an engine holds GPU memory."""
    loaded, skipped = [], []
    for path, from_folder in candidates:
        try:
            predictor = stack.enter_context(load_predictor(path, provider=provider))
        except ProviderUnavailableError as exc:
            if not from_folder:
                raise
            skipped.append((str(path), str(exc)))
            console.print(f"[yellow]skipped[/] {escape(path.name)}: {escape(str(exc))}")
            continue
        if predictor.metadata.kind == "checkpoint":
            raise UsageError(f"{path}: is a checkpoint; parity compares exported artifacts with the --reference checkpoint")
        check_compatible(predictor.metadata, reference)
        loaded.append(predictor)
    if not loaded:
        raise ArtifactError("no artifact can be compared on this machine: "
                            + "; ".join(f"{Path(a).name}: {why}" for a, why in skipped),
                            "run parity where their runtime is installed (an engine: on its device, with TensorRT), "
                            "or pass the ONNX files")
    return loaded, skipped


def mirror_of(loaded: list[Predictor]) -> bool:
    """Whether the artifacts are mirror-averaged; one reference serves one kind, so a mix is refused."""
    flags = {p.metadata.mirror_average for p in loaded}
    if len(flags) > 1:
        mirrored = [p.metadata.path.name for p in loaded if p.metadata.mirror_average]
        plain = [p.metadata.path.name for p in loaded if not p.metadata.mirror_average]
        raise UsageError(f"{mirrored[0]} averages each picture with its mirror image but {plain[0]} does not; "
                         "one parity run compares artifacts of one kind",
                         "pass the *-mirror-* files and the others in separate parity runs")
    return flags == {True}


def refuse_unreachable_tolerance(exc: ArtifactError, config: ParityConfig, reference: ArtifactInfo) -> None:
    """torchdiffeq's "underflow in dt 0.0" from a ``--reference-tol`` tighter than the default: the tolerance asks
    for steps below float precision, which is the command line's fault, not the checkpoint's. (A NaN step, or one
    at the default tolerance, is the model's dynamics: that stays an error of the checkpoint.)"""
    from edgenode.export.steps import REFERENCE_TOL

    solver = reference.solver
    raised = str(exc.__context__ or "")  # the solver's own error, which run_logits put in one line (torchdiffeq's
    step = raised.removeprefix("underflow in dt").strip()  # assertion: f"underflow in dt {dt.item()}")
    if config.reference_solver is None or step == raised or "nan" in step or not solver.rtol < REFERENCE_TOL:
        return
    raise UsageError(f"--reference-tol {solver.rtol:g}: {solver.method} cannot reach it on {reference.path.name} "
                     "(its step size underflows)", f"pass a larger --reference-tol, such as the default {REFERENCE_TOL:g}")


def run_parity(config: ParityConfig) -> ParityReport:
    """Compare every artifact with the reference on the manifest's split; writes reports when ``config.out``.

    Every session and engine it opens is closed on the way out, by error or Ctrl-C too: a demo, a notebook or
    a test suite calls this in a process that goes on."""
    with contextlib.ExitStack() as stack:
        return _run_parity(config, stack)


def _run_parity(config: ParityConfig, stack: contextlib.ExitStack) -> ParityReport:
    from edgenode.data import load_scored_split, normalize_array

    expect_kind(config.reference, ("checkpoint",), "--reference")
    reference = stack.enter_context(load_predictor(config.reference, provider=_torch_provider(config.provider),
                                                   reference_solver=config.reference_solver))
    ref_info = reference.metadata
    notes = list(reference.notes)
    if config.reference_solver is not None and not ref_info.source_solver.is_adaptive:
        # in place of the reference's own "solver … replaces the trained …": the same fact, with why
        notes = [f"the checkpoint was trained with a fixed-step solver ({ref_info.source_solver.describe()}); "
                 f"the reference integrates its ODE with {ref_info.solver.describe()} instead"]
    manifest_path, manifest = manifest_of_run(ref_info.path, ref_info.manifest_sha256, config.manifest)
    candidates = expand_artifacts(config.artifacts)
    loaded, skipped = load_candidates(candidates, ref_info, config.provider, stack)
    if not config.allow_other_reference:
        refuse_other_sources([predictor.metadata for predictor in loaded], ref_info, len(skipped))
    if mirror_of(loaded):  # compare like with like: the reference sees each picture with its mirror image too
        reference.close()
        reference = stack.enter_context(load_predictor(config.reference, provider=_torch_provider(config.provider),
                                                       reference_solver=config.reference_solver, mirror_average=True))
        ref_info = reference.metadata
        notes.append("the artifacts average each picture with its mirror image (export --mirror-average); "
                     "so does the reference")
    images, labels = load_scored_split(manifest, manifest_path, config.data, config.split, ref_info.input)
    x = normalize_array(images, ref_info.input.mean, ref_info.input.std)
    console.print(f"reference {ref_info.path.name}: {ref_info.solver.describe()} on {reference.runner.describe()}; "
                  f"{config.split} split, {len(labels)} images", markup=False)
    judged = [(predictor, provenance(predictor.metadata, ref_info, config.allow_other_reference))
              for predictor in loaded]  # every warning before the slow reference solve
    try:
        ref_logits = reference_logits(reference, x, config, manifest.sha256)
    except ArtifactError as exc:
        refuse_unreachable_tolerance(exc, config, ref_info)
        raise
    if not np.isfinite(ref_logits).all():  # every comparison with it would be meaningless (a NaN row's argmax is 0)
        bad = int((~np.isfinite(ref_logits).all(axis=1)).sum())
        raise ArtifactError(f"{ref_info.path}: the reference gives inf/NaN logits on {bad} of {len(ref_logits)} "
                            f"{config.split} images ({ref_info.solver.describe()})",
                            "check the checkpoint with `edgenode evaluate`; with --reference-solver trained, a "
                            "fixed-step solver may be too coarse")

    attributor = Attributor(reference, ref_logits, x, config.batch_size) if config.attribution else None
    results: list[ParityResult] = []
    for predictor, (artifact_notes, other) in judged:
        info = predictor.metadata
        logits, ms_per_image = run_logits(predictor, x, config.batch_size, info.path.name)
        numeric = None
        if info.kind == "onnx":  # inf/NaN or saturated logits fail, named at the node where it starts
            from edgenode.export.numerics import diagnose_logits

            verdict = diagnose_logits(info.path, logits, x, saturation=info.precision != "fp32")
            numeric = verdict.failure
            if verdict.warning:
                artifact_notes = [*artifact_notes, f"numerics: {verdict.warning}"]
        stages = attributor.stages(predictor, logits, [p for p, _ in candidates]) if attributor else []
        result = compare_logits(
            ref_logits, logits, labels, ref_info.classes, name=info.path.name, path=str(info.path), kind=info.kind,
            precision=info.precision, steps=info.steps, size_bytes=info.size_bytes, runtime=predictor.runner.describe(),
            thresholds=config.thresholds, int8_target=info.int8_target, attribution=stages,
            latency_ms_per_image=ms_per_image, notes=artifact_notes, numeric=numeric, other_checkpoint=other,
        )
        predictor.close()  # now: its memory is free for the next one (the stack's second close does nothing)
        results.append(result)
        colour = "green" if result else "red"
        console.print(escape(f"{ref_info.path.name} vs. {info.path.name} | ") + f"[{colour}]{result.verdict}[/] | " + escape(
                      f"acc {result.reference_accuracy:.3f} → {result.accuracy:.3f} ({result.accuracy_delta_pt:+.2f} pt), "
                      f"agreement {result.diff.agreement_pct:.2f} %, max|Δlogit| {result.diff.max_abs_logit_error:.3g}"
                      + (f" — {'; '.join(result.failures())}" if not result else "")))
    report = ParityReport(
        reference={**ref_info.to_dict(), "solver": ref_info.solver.describe(), "trained_solver": ref_info.source_solver.describe(),
                   "runtime": reference.runner.describe()},
        data={"root": str(config.data), "manifest": str(manifest_path), "manifest_sha256": manifest.sha256,
              "split": config.split, "n": int(len(labels))},
        thresholds=config.thresholds, results=results, skipped=skipped, notes=notes,
    )
    if config.out:
        from edgenode.parity.report import write_report

        report.files = write_report(report, Path(config.out))
    return report


def _torch_provider(provider: str) -> str:
    """The reference runs on torch: tensorrt/cuda requests mean 'the GPU' there, cpu means cpu."""
    return "cpu" if provider == "cpu" else "auto"
