"""How many fixed steps to unroll (``--steps auto``) and whether the trained model really is an ODE.

Step sweep
    On the validation split, RK4 (or the deploy method) with N ∈ {1, 2, 3, 4, 6, 8, 12, 16} is compared with
    an adaptive reference (dopri5, rtol = atol = 1e-6, float64). The smallest N whose top-1 agreement with
    the reference is ≥ 99.5 % and whose accuracy is within 0.3 pt of the reference's is chosen. The
    candidate runs in float32, as deployed; the reference in float64, so that it is the exact solution
    for every practical purpose.

ODE validity (Ott et al., "ResNet after all? Neural ODEs and their numerical solution", ICLR 2021)
    A model trained with too coarse a solver learns to exploit that solver's error: it is then a ResNet
    whose accuracy *drops* when the ODE is solved more accurately, and no step count reproduces "the ODE".
    We solve at N, 2N, 4N steps and on a dopri5 tolerance ladder (1e-3, 1e-5, 1e-7), all in float64, and
    call the model a valid ODE when (a) logits contract along both ladders, (b) accuracy moves by at most
    1 pt across all rungs, and (c) the deployed N agrees with the tightest solve on ≥ 99 % of images.
    Otherwise the export warns loudly and flags ``ode_valid: false`` in the report and metadata: the
    artifact still reproduces the deployed discretisation, but "the Neural ODE" it claims to be does not
    exist independently of that discretisation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edgenode.artifacts import atomic_write_bytes, write_json
from edgenode.errors import ParityError, UsageError, is_whole_number
from edgenode.export.unroll import MAX_STEPS
from edgenode.model import NeuralODECNN
from edgenode.ode.solvers import EVALS_PER_STEP, SolverConfig

SWEEP_STEPS = (1, 2, 3, 4, 6, 8, 12, 16)
REFERENCE_METHOD = "dopri5"
REFERENCE_TOL = 1e-6
TOLERANCE_LADDER = (1e-3, 1e-5, 1e-7)
SWEEP_FILES = ("steps_sweep.json", "steps_sweep.md", "steps_sweep.png")


@torch.no_grad()
def solve_logits(model: NeuralODECNN, solver: SolverConfig, images: torch.Tensor, dtype: torch.dtype = torch.float32,
                 batch_size: int = 64) -> tuple[np.ndarray, int]:
    """Logits (float64 numpy) of ``model`` with ``solver`` computed in ``dtype``, and the NFE of one solve."""
    solved = model.with_solver(solver).to(dtype).eval()
    outputs, nfe = [], 0
    for start in range(0, len(images), batch_size):
        outputs.append(solved(images[start : start + batch_size].to(dtype)).double())
        nfe = max(nfe, solved.nfe)
    return torch.cat(outputs).numpy(), nfe


def top1(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits).argmax(axis=1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of images whose top-1 class is the same under both logits."""
    return float(np.mean(top1(a) == top1(b))) if len(a) else 1.0


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(top1(logits) == np.asarray(labels))) if len(labels) else 0.0


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))) if np.size(a) else 0.0


# --- the step sweep -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepCriteria:
    """What makes a step count good enough; ``max_logit_diff`` (None: unused) is an optional extra bound."""

    min_agreement: float = 0.995
    max_accuracy_gap: float = 0.003
    max_logit_diff: float | None = None

    def __post_init__(self):
        if not 0 < self.min_agreement <= 1:
            raise UsageError(f"minimum top-1 agreement must be in (0, 1], got {self.min_agreement}", "use e.g. 0.995")
        if self.max_accuracy_gap < 0:
            raise UsageError(f"accuracy gap must be >= 0, got {self.max_accuracy_gap}", "use e.g. 0.003 (0.3 pt)")
        if self.max_logit_diff is not None and self.max_logit_diff <= 0:
            raise UsageError(f"max logit difference must be > 0, got {self.max_logit_diff}", "leave it unset or use e.g. 0.05")


@dataclass(frozen=True)
class SweepRow:
    steps: int
    nfe: int
    agreement: float
    accuracy: float
    max_abs_logit_diff: float
    qualifies: bool


@dataclass(frozen=True)
class StepSweep:
    method: str
    reference: dict[str, Any]
    rows: tuple[SweepRow, ...]
    criteria: SweepCriteria
    n_images: int

    @property
    def chosen(self) -> int | None:
        """The smallest qualifying step count, or None when none qualifies."""
        return next((row.steps for row in self.rows if row.qualifies), None)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "reference": self.reference, "criteria": asdict(self.criteria),
                "n_images": self.n_images, "chosen": self.chosen, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        ref = self.reference
        c = self.criteria
        extra = f", max |Δlogit| ≤ {c.max_logit_diff:g}" if c.max_logit_diff is not None else ""
        lines = [
            f"# Step sweep: {self.method} vs {ref['solver']} on {self.n_images} validation images",
            "",
            f"Reference accuracy {ref['accuracy']:.4f}, NFE {ref['nfe']}. Criteria: top-1 agreement ≥ "
            f"{c.min_agreement:.1%}, |accuracy − reference| ≤ {c.max_accuracy_gap * 100:.1f} pt{extra}.",
            f"Chosen: {self.chosen if self.chosen is not None else 'none qualifies'}",
            "",
            "| N | NFE | agreement | accuracy | max abs Δlogit | qualifies |",
            "|---:|---:|---:|---:|---:|:---:|",
        ]
        for r in self.rows:
            mark = "**yes**" if r.steps == self.chosen else ("yes" if r.qualifies else "no")
            lines.append(f"| {r.steps} | {r.nfe} | {r.agreement:.4f} | {r.accuracy:.4f} | {r.max_abs_logit_diff:.3e} | {mark} |")
        return "\n".join(lines) + "\n"


def reference_solver(tol: float = REFERENCE_TOL) -> SolverConfig:
    return SolverConfig(method=REFERENCE_METHOD, rtol=tol, atol=tol)


def sweep_steps(model: NeuralODECNN, images: torch.Tensor, labels: np.ndarray, method: str = "rk4",
                candidates: Sequence[int] = SWEEP_STEPS, criteria: SweepCriteria = SweepCriteria(),
                reference_tol: float = REFERENCE_TOL) -> StepSweep:
    """Compare ``method`` × N (float32) with dopri5 at ``reference_tol`` (float64) for each N of ``candidates``."""
    if not candidates or not all(is_whole_number(n) for n in candidates):
        raise UsageError(f"step candidates must be positive whole numbers, got {list(candidates)!r}")
    labels = np.asarray(labels)
    ref_solver = reference_solver(reference_tol)
    ref_logits, ref_nfe = solve_logits(model, ref_solver, images, torch.float64)
    ref_accuracy = accuracy(ref_logits, labels)
    rows = []
    for n in sorted(set(candidates)):
        logits, _ = solve_logits(model, SolverConfig(method=method, n_steps=n), images, torch.float32)
        agree, acc, diff = agreement(logits, ref_logits), accuracy(logits, labels), max_abs_diff(logits, ref_logits)
        ok = agree >= criteria.min_agreement and abs(acc - ref_accuracy) <= criteria.max_accuracy_gap + 1e-12
        if criteria.max_logit_diff is not None:
            ok = ok and diff <= criteria.max_logit_diff
        rows.append(SweepRow(n, EVALS_PER_STEP[method] * n, agree, acc, diff, ok))
    reference = {"solver": ref_solver.describe(), "rtol": reference_tol, "atol": reference_tol,
                 "accuracy": ref_accuracy, "nfe": ref_nfe, "dtype": "float64"}
    return StepSweep(method, reference, tuple(rows), criteria, len(labels))


def write_sweep(sweep: StepSweep, out_dir: str | Path) -> list[Path]:
    """steps_sweep.json, steps_sweep.md and steps_sweep.png in ``out_dir``."""
    out_dir = Path(out_dir)
    json_path, md_path, png_path = (out_dir / name for name in SWEEP_FILES)
    write_json(json_path, sweep.to_dict())
    atomic_write_bytes(md_path, sweep.to_markdown().encode("utf-8"))
    plot_sweep(sweep, png_path)
    return [json_path, md_path, png_path]


def plot_sweep(sweep: StepSweep, path: Path) -> Path:
    from edgenode.plots import plt, save_figure

    steps = [r.steps for r in sweep.rows]
    fig, (ax_top1, ax_diff) = plt.subplots(1, 2, figsize=(10, 4))
    ax_top1.plot(steps, [r.agreement for r in sweep.rows], "o-", label="top-1 agreement with reference")
    ax_top1.plot(steps, [r.accuracy for r in sweep.rows], "s-", label="accuracy")
    ax_top1.axhline(sweep.reference["accuracy"], color="grey", ls=":", label="reference accuracy")
    ax_top1.axhline(sweep.criteria.min_agreement, color="red", ls="--", lw=0.8, label="agreement threshold")
    ax_top1.set(xlabel=f"{sweep.method} steps N", ylabel="fraction of validation images", ylim=(0, 1.02))
    diffs = [max(r.max_abs_logit_diff, 1e-12) for r in sweep.rows]
    ax_diff.semilogy(steps, diffs, "o-")
    ax_diff.set(xlabel=f"{sweep.method} steps N", ylabel="max |Δlogit| vs reference")
    for ax in (ax_top1, ax_diff):
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.grid(alpha=0.3)
        if sweep.chosen is not None:
            ax.axvline(sweep.chosen, color="green", ls="--", lw=1, label=f"chosen N={sweep.chosen}")
    ax_top1.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{sweep.method} step sweep vs {sweep.reference['solver']}")
    return save_figure(fig, path)


def choose_steps(sweep: StepSweep, out_dir: str | Path) -> int:
    """The chosen N, or a ParityError that names the best candidate and where the table is."""
    if sweep.chosen is not None:
        return sweep.chosen
    best = max(sweep.rows, key=lambda r: (r.agreement, -abs(r.accuracy - sweep.reference["accuracy"])))
    c = sweep.criteria
    raise ParityError(
        f"--steps auto: no {sweep.method} step count in {[r.steps for r in sweep.rows]} reaches top-1 agreement "
        f"≥ {c.min_agreement:.1%} and accuracy within {c.max_accuracy_gap * 100:.1f} pt of {sweep.reference['solver']} "
        f"(best: N={best.steps}, agreement {best.agreement:.1%}, accuracy {best.accuracy:.3f} vs {sweep.reference['accuracy']:.3f})",
        f"see {Path(out_dir) / SWEEP_FILES[1]}; pass --steps N explicitly to accept a coarser model, or try --method",
    )


# --- ODE validity -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rung:
    solver: str
    nfe: int
    accuracy: float
    max_abs_diff_to_previous: float | None


@dataclass(frozen=True)
class OdeValidity:
    method: str
    steps: int
    fixed: tuple[Rung, ...]
    adaptive: tuple[Rung, ...]
    deployed_agreement: float  # top-1 agreement of the deployed N with the tightest adaptive solve
    converged: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    suggested_steps: int | None = None  # the smallest of 2N, 4N that agrees well enough when N does not
    suggested_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "ode_valid": self.converged, "reasons": list(self.reasons),
                "deployed_agreement_with_tightest": self.deployed_agreement,
                "suggested_steps": self.suggested_steps, "suggested_agreement": self.suggested_agreement,
                "fixed_ladder": [asdict(r) for r in self.fixed], "tolerance_ladder": [asdict(r) for r in self.adaptive]}

    def summary(self) -> str:
        verdict = "logits and accuracy converge" if self.converged else "; ".join(self.reasons)
        accs = ", ".join(f"{r.solver} {r.accuracy:.3f}" for r in (*self.fixed, *self.adaptive))
        return f"ODE validity ({self.method}×{self.steps}): {verdict} [accuracy: {accs}]"


RungCallback = Callable[[Rung, float], None]  # (the rung just solved, its seconds): progress for long checks


def _ladder(model, solvers: Sequence[SolverConfig], images, labels,
            on_rung: RungCallback | None = None) -> tuple[list[Rung], list[np.ndarray]]:
    rungs, logits_list = [], []
    for solver in solvers:
        started = time.perf_counter()
        logits, nfe = solve_logits(model, solver, images, torch.float64)
        previous = max_abs_diff(logits, logits_list[-1]) if logits_list else None
        rungs.append(Rung(solver.describe(), nfe, accuracy(logits, labels), previous))
        logits_list.append(logits)
        if on_rung is not None:
            on_rung(rungs[-1], time.perf_counter() - started)
    return rungs, logits_list


def _contracts(rungs: list[Rung], scale: float, contraction: float) -> bool:
    diffs = [r.max_abs_diff_to_previous for r in rungs if r.max_abs_diff_to_previous is not None]
    if len(diffs) < 2:
        return True
    floor = 1e-6 * max(1.0, scale)  # already converged to rounding level: nothing left to contract
    return all(later <= contraction * earlier or later <= floor for earlier, later in zip(diffs, diffs[1:]))


def check_ode_validity(model: NeuralODECNN, images: torch.Tensor, labels: np.ndarray, method: str, n_steps: int,
                       tolerances: Sequence[float] = TOLERANCE_LADDER, max_accuracy_spread: float = 0.01,
                       min_deployed_agreement: float = 0.99, contraction: float = 0.75,
                       on_rung: RungCallback | None = None) -> OdeValidity:
    """Solve at N, 2N, 4N and on a dopri5 tolerance ladder (float64) and judge convergence (module docstring).

    The tight float64 dopri5 solves take minutes on a CPU for a trained model: ``on_rung`` hears of each solve.
    """
    labels = np.asarray(labels)
    fixed_solvers = [SolverConfig(method=method, n_steps=n_steps * k) for k in (1, 2, 4)]
    adaptive_solvers = [SolverConfig(method=REFERENCE_METHOD, rtol=t, atol=t) for t in tolerances]
    fixed, fixed_logits = _ladder(model, fixed_solvers, images, labels, on_rung)
    adaptive, adaptive_logits = _ladder(model, adaptive_solvers, images, labels, on_rung)
    scale = float(np.max(np.abs(adaptive_logits[-1]))) if np.size(adaptive_logits[-1]) else 1.0
    reasons = []
    if not _contracts(fixed, scale, contraction):
        reasons.append(f"logits do not converge over {method}×{n_steps}, ×{2 * n_steps}, ×{4 * n_steps} "
                       f"(max |Δ| {', '.join(f'{r.max_abs_diff_to_previous:.2e}' for r in fixed[1:])})")
    if not _contracts(adaptive, scale, contraction):
        reasons.append(f"logits do not converge over the dopri5 tolerance ladder {list(tolerances)} "
                       f"(max |Δ| {', '.join(f'{r.max_abs_diff_to_previous:.2e}' for r in adaptive[1:])})")
    accuracies = [r.accuracy for r in (*fixed, *adaptive)]
    spread = max(accuracies) - min(accuracies)
    if spread > max_accuracy_spread + 1e-12:
        reasons.append(f"accuracy moves by {spread * 100:.1f} pt across solvers (allowed {max_accuracy_spread * 100:.1f} pt)")
    deployed = agreement(fixed_logits[0], adaptive_logits[-1])
    suggested = suggested_agreement = None
    if deployed < min_deployed_agreement:
        reasons.append(f"{method}×{n_steps} agrees with the tightest dopri5 solve on only {deployed:.1%} of images "
                       f"(want ≥ {min_deployed_agreement:.0%})")
        # A network trained with few large steps can still be an ODE that a finer grid solves: say which N would do
        # (only when everything else converged, so the suggestion is a solve of a well-behaved ODE).
        for solver, logits in zip(fixed_solvers[1:] if len(reasons) == 1 else [], fixed_logits[1:]):
            if solver.n_steps > MAX_STEPS:  # export refuses it: no suggestion it cannot follow
                break
            finer = agreement(logits, adaptive_logits[-1])
            if finer >= min_deployed_agreement:
                suggested, suggested_agreement = solver.n_steps, finer
                break
    return OdeValidity(method, n_steps, tuple(fixed), tuple(adaptive), deployed, not reasons, tuple(reasons),
                       suggested, suggested_agreement)
