"""A parity report for people and for pipelines: a rich table, ``parity.json``, ``parity.md`` and PNG plots.

One row per artifact (artifact, precision, steps, size, accuracy with its 95 % interval, Δacc, agreement,
max |Δlogit|, verdict), the same table in Markdown, then per artifact the error attribution and the classes
whose accuracy moved. Plots: agreement per artifact against its threshold, the distribution of |Δlogit|, and
the confusion of disagreements (reference top-1 vs. artifact top-1 where they differ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgenode.artifacts import atomic_write_bytes, human_size, write_json
from edgenode.metrics import format_accuracy
from edgenode.parity.compare import ParityResult, StageDiff

COLUMNS = ("Artifact", "Precision", "Steps", "Size", "Accuracy [95 % CI]", "Δacc", "Agreement", "max|Δlogit|", "Verdict")




def result_row(r: ParityResult) -> list[str]:
    precision = r.precision + (f" ({r.int8_target})" if r.int8_target else "") + (" engine" if r.kind == "engine" else "")
    return [
        r.name, precision, "—" if r.steps is None else str(r.steps), human_size(r.size_bytes),
        format_accuracy(r.accuracy, r.accuracy_ci), f"{r.accuracy_delta_pt:+.2f} pt",
        f"{r.diff.agreement_pct:.2f} %", f"{r.diff.max_abs_logit_error:.3g}", r.verdict,
    ]


def stage_row(s: StageDiff) -> list[str]:
    if s.diff is None:
        return [s.stage, f"{s.a} vs. {s.b}", "n/a", "n/a", s.reason or ""]
    return [s.stage, f"{s.a} vs. {s.b}", f"{s.diff.agreement_pct:.2f} %", f"{s.diff.max_abs_logit_error:.3g}",
            f"mean {s.diff.mean_abs_logit_error:.3g}"]


def rich_table(report):
    from rich.markup import escape
    from rich.table import Table

    ref = report.reference
    first = report.results[0]
    title = (f"Parity vs. {Path(ref['path']).name} [{ref['solver']}] — {report.data['split']} split, {report.data['n']} images; "
             f"reference accuracy {format_accuracy(first.reference_accuracy, first.reference_ci)}")
    table = Table(title=escape(title))
    for column in COLUMNS:
        # fold, not "…": at 80 columns two files named alike (model-rk4x4-fp16/-fp32) were both "model-rk4x4-f…"
        table.add_column(column, justify="left" if column in ("Artifact", "Precision") else "right", overflow="fold")
    for r in report.results:
        row = [escape(cell) for cell in result_row(r)]
        row[-1] = f"[green]{row[-1]}[/]" if r else f"[bold red]{row[-1]}[/]"
        table.add_row(*row)
    for artifact, why in report.skipped:  # not compared, so not passed: in the table, where a reader looks
        table.add_row(escape(Path(artifact).name), *[""] * (len(COLUMNS) - 2), f"[yellow]skipped[/]: {escape(why)}")
    return table


def attribution_table(result: ParityResult):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"Error attribution — {result.name}"))
    for column in ("Stage", "Compares", "Agreement", "max|Δlogit|", "Note"):
        table.add_column(column, overflow="fold")
    for stage in result.attribution:
        table.add_row(*map(escape, stage_row(stage)))
    return table


def _md_table(header, rows) -> list[str]:
    esc = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return lines


def markdown(report) -> str:
    ref, data, th = report.reference, report.data, report.thresholds
    first = report.results[0]
    lines = [
        "# Parity report", "",
        f"**{report.summary_line()}**", "",
        f"- Reference: `{Path(ref['path']).name}` (sha256 `{ref['sha256'][:12]}…`) with {ref['solver']} "
        f"(trained with {ref['trained_solver']}), on {ref['runtime']}",
        f"- Data: {data['split']} split of `{data['manifest']}` (sha256 `{data['manifest_sha256'][:12]}…`), "
        f"{data['n']} images; reference accuracy {format_accuracy(first.reference_accuracy, first.reference_ci)} (label-free argmax)",
        f"- Thresholds: FP32/FP16 accuracy drop ≤ {th.max_drop_pt:g} pt and agreement ≥ {th.min_agreement_pct:g} %; "
        f"INT8 drop ≤ {th.int8_max_drop_pt:g} pt and agreement ≥ {th.int8_min_agreement_pct:g} %; no inf/NaN"
        + (f"; max |Δlogit| ≤ {th.max_logit_error:g}" if th.max_logit_error is not None else ""),
        "",
    ]
    lines += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    lines += _md_table(COLUMNS, [result_row(r) for r in report.results]) + [""]
    for skipped, why in report.skipped:
        lines.append(f"- skipped `{Path(skipped).name}`: {why}")
    for r in report.results:
        lines += ["", f"## {r.name} — {r.verdict}", "",
                  f"- Runtime: {r.runtime}" + (f", {r.latency_ms_per_image:.2f} ms/image" if r.latency_ms_per_image else ""),
                  f"- Accuracy {format_accuracy(r.accuracy, r.accuracy_ci)} vs. reference "
                  f"{format_accuracy(r.reference_accuracy, r.reference_ci)}: {r.accuracy_delta_pt:+.2f} pt",
                  f"- Top-1 agreement {r.diff.agreement_pct:.2f} % ({round(r.n * (1 - r.diff.agreement))} of {r.n} differ); "
                  f"|Δlogit| max {r.diff.max_abs_logit_error:.3g} mean {r.diff.mean_abs_logit_error:.3g}; "
                  f"|Δprob| max {r.diff.max_abs_prob_error:.3g} mean {r.diff.mean_abs_prob_error:.3g}; inf/NaN {r.diff.nonfinite}",
                  f"- Tightest thresholds it passes: drop ≤ {r.min_passing['max_drop_pt']:.2f} pt, "
                  f"agreement ≥ {r.min_passing['min_agreement_pct']:.2f} %, max |Δlogit| ≤ {r.min_passing['max_logit_error']:.3g}"]
        if r.failures():
            lines.append(f"- **Fails:** {'; '.join(r.failures())}")
        lines += [f"- Note: {note}" for note in r.notes]
        if r.attribution:
            lines += ["", "Error attribution (each stage compares two neighbours in the chain reference → deployed):", "",
                      *_md_table(("Stage", "Compares", "Agreement", "max|Δlogit|", "Note"), [stage_row(s) for s in r.attribution])]
        if r.class_changes:
            lines += ["", "Classes whose accuracy moved:", "",
                      *_md_table(("Class", "n", "Reference", "Artifact", "Δ"),
                                 [(c.name, c.n, f"{c.reference_accuracy:.3f}", f"{c.accuracy:.3f}", f"{c.delta_pt:+.1f} pt")
                                  for c in r.class_changes])]
        else:
            lines += ["", "No class changed accuracy."]
    lines += ["", "Plots: `agreement.png`, `logit_error_hist.png`, `disagreements.png`.", ""]
    return "\n".join(lines)


def plot_agreement(report, path: Path) -> Path:
    from edgenode.plots import plt, save_figure

    results = report.results
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(results) + 1.5))
    names = [r.name for r in results]
    values = [r.diff.agreement_pct for r in results]
    colours = ["tab:green" if r else "tab:red" for r in results]
    ax.barh(names, values, color=colours)
    for i, r in enumerate(results):
        ax.plot([r.min_agreement_pct] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    low = min([*values, *(r.min_agreement_pct for r in results)])
    ax.set(xlim=(max(0.0, low - 2), 100.5), xlabel="top-1 agreement with the reference (%); black: threshold",
           title="Agreement per artifact")
    ax.invert_yaxis()
    return save_figure(fig, path)


def plot_logit_errors(report, path: Path) -> Path:
    from edgenode.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    errors = [r.abs_logit_error for r in report.results if r.abs_logit_error is not None and r.abs_logit_error.size]
    peak = max((float(e.max()) for e in errors), default=1.0)
    bins = np.logspace(-9, np.log10(max(peak, 1e-8)) + 0.1, 60)
    for r in report.results:
        if r.abs_logit_error is not None and r.abs_logit_error.size:
            ax.hist(np.clip(r.abs_logit_error, 1e-9, None), bins=bins, histtype="step", linewidth=1.5, label=r.name)
    ax.set(xscale="log", xlabel="|logit − reference logit| (all classes, all images)", ylabel="count",
           title="Logit error vs. the reference")
    if errors:  # every artifact all inf/NaN: nothing to draw, and no legend to warn about
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_disagreements(report, path: Path) -> Path:
    from edgenode.plots import plt, save_figure

    results = report.results
    classes = report.reference["classes"]
    k = len(classes)
    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.3 * rows), squeeze=False, layout="constrained")
    for ax, r in zip(axes.flat, results):
        matrix = np.zeros((k, k), dtype=int)
        if r.reference_pred is not None and r.pred is not None:
            differ = (r.reference_pred != r.pred) & (r.pred >= 0)
            np.add.at(matrix, (r.reference_pred[differ], r.pred[differ]), 1)
        ax.imshow(matrix, cmap="Reds", vmin=0, vmax=max(1, matrix.max()))
        ax.set(title=f"{r.name}\n{int(matrix.sum())} disagreement(s)", xlabel="artifact top-1", ylabel="reference top-1")
        ticks = range(k) if k <= 20 else []
        ax.set_xticks(list(ticks))
        ax.set_yticks(list(ticks))
        for i, j in zip(*np.nonzero(matrix)):
            dark = matrix[i, j] > 0.5 * matrix.max()
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    fig.suptitle("Confusion of disagreements (reference vs. artifact top-1)")
    return save_figure(fig, path)


def write_report(report, out: Path) -> list[Path]:
    """``parity.json``, ``parity.md``, ``agreement.png``, ``logit_error_hist.png``, ``disagreements.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_json(out / "parity.json", report.to_dict()),
        atomic_write_bytes(out / "parity.md", markdown(report).encode("utf-8")),
        plot_agreement(report, out / "agreement.png"),
        plot_logit_errors(report, out / "logit_error_hist.png"),
        plot_disagreements(report, out / "disagreements.png"),
    ]
    return files
