"""Bench results for people and pipelines: one row per artifact, a rich table, bench.json, bench.md, PNGs.

Each row is measured in the same process on the same machine; the columns a reader should trust across
machines are the ratios — speed-up over the baseline row (the adaptive-solver torch model) and the fraction
of the measured peak — not the absolute milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenode.artifacts import atomic_write_bytes, human_size, write_json
from edgenode.bench.flops import ModelFlops
from edgenode.bench.memory import MemoryUsage
from edgenode.bench.peak import Peak
from edgenode.bench.timing import TimingStats
from edgenode.metrics import ClassificationMetrics, format_accuracy

BENCH_FORMAT = "edgenode-bench/1"
GROUPS = ("baseline", "artifact", "sweep", "gpu")


@dataclass
class BenchRow:
    """One thing that was run: an artifact on one runtime/provider, the baseline, a sweep point or a GPU mode."""

    name: str
    group: str  # baseline | artifact | sweep | gpu
    kind: str  # checkpoint | onnx | engine | in-memory torch | in-memory onnx
    runtime: str  # e.g. "onnxruntime (CPUExecutionProvider)", "torch (cpu)"
    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 | bf16 | int8
    solver: str
    steps: int | None
    path: str | None = None
    size_bytes: int | None = None
    timings: dict[int, TimingStats] = field(default_factory=dict)
    nfe: dict[int, int] = field(default_factory=dict)  # evaluations of f per solve, per batch size
    flops_per_image: dict[int, int | None] = field(default_factory=dict)
    memory: MemoryUsage | None = None
    cuda_peak_bytes: int | None = None
    accuracy: ClassificationMetrics | None = None
    agreement: float | None = None  # top-1 agreement with the baseline on the same images
    speedup: dict[int, float] = field(default_factory=dict)  # baseline p50 / this p50, per batch size
    fraction_of_peak: dict[int, float | None] = field(default_factory=dict)
    peak_key: str | None = None  # "cpu/fp32": the peak it is a fraction of
    notes: list[str] = field(default_factory=list)

    def p50_ms(self, batch: int) -> float | None:
        stats = self.timings.get(batch)
        return stats.p50_ms if stats else None

    def throughput_ips(self, batch: int) -> float | None:
        stats = self.timings.get(batch)
        return stats.throughput_ips if stats else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "group": self.group, "kind": self.kind, "runtime": self.runtime, "device": self.device,
            "precision": self.precision, "solver": self.solver, "steps": self.steps, "path": self.path,
            "size_bytes": self.size_bytes,
            "timings": {str(b): t.to_dict() for b, t in sorted(self.timings.items())},
            "nfe": {str(b): n for b, n in sorted(self.nfe.items())},
            "flops_per_image": {str(b): f for b, f in sorted(self.flops_per_image.items())},
            "memory": self.memory.to_dict() if self.memory else None,
            "cuda_peak_bytes": self.cuda_peak_bytes,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "agreement": self.agreement,
            "speedup_vs_baseline": {str(b): s for b, s in sorted(self.speedup.items())},
            "fraction_of_peak": {str(b): f for b, f in sorted(self.fraction_of_peak.items())},
            "peak": self.peak_key,
            "notes": list(self.notes),
        }


@dataclass
class BenchReport:
    machine: dict[str, Any]
    config: dict[str, Any]
    batch_sizes: tuple[int, ...]
    flops: ModelFlops
    rows: list[BenchRow]
    peak: Peak | None = None
    data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def latency_batch(self) -> int:
        return min(self.batch_sizes)

    @property
    def throughput_batch(self) -> int:
        return max(self.batch_sizes)

    @property
    def baseline(self) -> BenchRow:
        return next(r for r in self.rows if r.group == "baseline")

    def row(self, name: str) -> BenchRow:
        return next(r for r in self.rows if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        return _finite({
            "format": BENCH_FORMAT, "machine": self.machine, "config": self.config,
            "batch_sizes": list(self.batch_sizes), "latency_batch": self.latency_batch,
            "throughput_batch": self.throughput_batch, "baseline": self.baseline.name,
            "flops": self.flops.to_dict(), "peak": self.peak.to_dict() if self.peak else None,
            "data": self.data, "rows": [r.to_dict() for r in self.rows], "notes": list(self.notes),
        })


def _finite(obj: Any) -> Any:
    """Strict JSON: non-finite floats (a 0 ms timer tick's infinite rate) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --- formatting ------------------------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")




def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.1f}×" if value >= 10 else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _gflop(flops: int | None) -> str:
    return "—" if flops is None else f"{flops / 1e9:.3g}"


def _nfe(row: BenchRow, batch: int) -> str:
    return str(row.nfe[batch]) if batch in row.nfe else "—"


def columns(report: BenchReport) -> list[str]:
    b1, bn = report.latency_batch, report.throughput_batch
    return ["Row", "Runtime", "Precision", "Solver", "NFE", "Size", f"p50 ms (b={b1})", f"p95 ms (b={b1})",
            f"img/s (b={bn})", f"Speed-up b={b1}", f"Speed-up b={bn}", "GFLOP/img", f"% peak (b={bn})",
            "Peak mem", "Accuracy [95 % CI]", "Agreement"]


def row_cells(report: BenchReport, row: BenchRow) -> list[str]:
    b1, bn = report.latency_batch, report.throughput_batch
    t1 = row.timings.get(b1)
    memory = human_size(row.memory.peak_delta_bytes) if row.memory else "—"
    if row.cuda_peak_bytes is not None:
        memory += f" (+{human_size(row.cuda_peak_bytes)} GPU)"
    accuracy = format_accuracy(row.accuracy.accuracy, row.accuracy.accuracy_ci) if row.accuracy else "—"
    agreement = "—" if row.agreement is None else f"{100 * row.agreement:.1f} %"
    return [
        row.name, row.runtime, row.precision, row.solver, _nfe(row, b1), human_size(row.size_bytes),
        _ms(t1.p50_ms if t1 else None), _ms(t1.p95_ms if t1 else None),
        "—" if row.throughput_ips(bn) is None else f"{row.throughput_ips(bn):.4g}",
        _ratio(row.speedup.get(b1)), _ratio(row.speedup.get(bn)), _gflop(row.flops_per_image.get(bn)),
        _pct(row.fraction_of_peak.get(bn)), memory, accuracy, agreement,
    ]


def _speed_header(report: BenchReport) -> list[str]:
    b1, bn = report.latency_batch, report.throughput_batch
    return ["Row", "Precision", f"NFE b={b1}", f"p50 ms b={b1}", f"p95 ms b={b1}", f"img/s b={bn}",
            f"× b={b1}", f"× b={bn}", f"% peak b={bn}"]


def rich_tables(report: BenchReport) -> list:
    """Two terminal-sized tables over the same rows: speed (vs. the baseline and the peak), then size/accuracy."""
    from rich.table import Table

    full = columns(report)
    picks = [
        (f"speed — × = speed-up over {report.baseline.name}", _speed_header(report), [0, 2, 4, 6, 7, 8, 9, 10, 12]),
        ("size, memory, FLOPs and accuracy", [full[i] for i in (0, 1, 3, 5, 13, 11, 14, 15)], [0, 1, 3, 5, 13, 11, 14, 15]),
    ]
    tables = []
    for title, header, index in picks:
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 or name in ("Runtime", "Solver", "Precision") else "right",
                             overflow="fold")
        previous = None
        for row in report.rows:
            if previous is not None and row.group != previous:
                table.add_section()
            cells = row_cells(report, row)
            table.add_row(*[cells[i] for i in index], style="bold" if row.group == "baseline" else None)
            previous = row.group
        tables.append(table)
    return tables


def peak_lines(report: BenchReport) -> list[str]:
    if report.peak is None:
        return ["Peak not measured (--no-peak, or no ONNX Runtime to time the CPU's): no fraction of peak."]
    lines = []
    for m in report.peak.measurements:
        threads = f", {plural(m.threads, 'thread')}" if m.threads else ""
        lines.append(f"{m.name} ({m.device} {m.dtype}{threads}): {m.shape}: {m.gflops:.1f} GFLOP/s best "
                     f"({m.best_ms:.3g} ms), {m.gflops_p50:.1f} GFLOP/s median")
    for key, value in report.peak.to_dict()["peak"].items():
        lines.append(f"peak {key} = {value['gflops']:.1f} GFLOP/s (by {value['by']})")
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(map(esc, r)) + " |" for r in rows]]


def markdown(report: BenchReport) -> str:
    m = report.machine
    f = report.flops
    lines = [
        "# edgenode bench", "",
        f"Machine: {m.get('cpu')} ({m.get('physical_cores')} physical cores, {m.get('logical_cpus')} logical), "
        f"{plural(m.get('threads', 0), 'intra-op thread')} for every runtime; torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}"
        + (f"; GPU {m.get('gpu')}" if m.get("gpu") else "")
        + (f"; 1-minute load average {m['load_average_1min_at_start']} at the start"
           if m.get("load_average_1min_at_start") is not None else "") + ".",
        f"Baseline: **{report.baseline.name}** ({report.baseline.solver}). Speed-up = baseline p50 / row p50 at the "
        f"same batch size; latency at batch {report.latency_batch}, throughput (images/s = batch / p50) at batch "
        f"{report.throughput_batch}.",
    ]
    if report.data:
        lines.append(f"Accuracy (label-free top-1, 95 % Wilson interval) and agreement with the baseline on the "
                     f"{report.data['split']} split: {report.data['images']} images ({report.data['manifest']}).")
    lines += ["", *_md_table(columns(report), [row_cells(report, r) for r in report.rows]), "",
              "## FLOPs per image", "",
              "Counted: conv, linear and cosine-classifier layers, 2 × multiply-accumulates + bias adds; norms, "
              f"activations, pooling, the time channel and the solver's own arithmetic are not counted. State {list(f.state_shape)} at "
              f"{f.image_size} px.", "",
              *_md_table(["Part", "FLOPs", "GFLOP"], [
                  ["stem (once)", f"{f.stem:,}", _gflop(f.stem)],
                  ["f (one evaluation)", f"{f.f_eval:,}", _gflop(f.f_eval)],
                  ["one RK4 step (4 evaluations)", f"{f.per_step('rk4'):,}", _gflop(f.per_step("rk4"))],
                  ["head (once)", f"{f.head:,}", _gflop(f.head)],
              ]),
              "", "Total per image = stem + NFE · f + head (NFE = evaluations of f: 4·N for RK4 × N, measured for an "
              "adaptive solver); a mirror-averaged artifact runs all of it twice but the final classifier layer.",
              "", "## Peak", "",
              "Measured in the same run with the same thread count; each kernel's figure is its fastest repeat; "
              "a row's fraction of peak = FLOPs per image × images/s at the throughput batch / the largest peak of "
              "its device and dtype (CPU rows of every precision are compared with the CPU FP32 peak).", ""]
    lines += [f"- {line}" for line in peak_lines(report)]
    lines += ["", "## Memory", "",
              "Peak memory = the process's peak resident set size while the row loads its artifact and runs one call "
              "at each batch size, minus the resident size just before (after garbage collection and malloc_trim); "
              "measured with the kernel's high-water mark (VmHWM reset through /proc/self/clear_refs) or, where that "
              "is not available, an RSS sampling thread. GPU rows add torch's CUDA max_memory_allocated."]
    notes = list(report.notes) + [f"{r.name}: {n}" for r in report.rows for n in r.notes]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# --- plots -----------------------------------------------------------------------------------------------


def plain_log_labels(axis) -> None:
    """Label a log axis with plain numbers (2 rather than 2×10⁰): at 1, 2 and 5 of each decade when it spans at most
    two decades, so latencies that all sit within one decade still get labels; at powers of ten beyond that."""
    import matplotlib.ticker

    def label(value: float, _position) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        shown = (1, 2, 5) if math.log10(high / low) <= 2 else (1,)
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return f"{value:g}" if min(abs(mantissa - m) for m in shown) < 1e-6 else ""

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(label))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(label))


def plot_latency_accuracy(report: BenchReport, path: Path) -> Path | None:
    """Batch-1 p50 latency (log x) vs. accuracy, one point per row; sweep rows joined as a line per runtime."""
    rows = [r for r in report.rows if r.accuracy is not None and r.p50_ms(report.latency_batch) is not None]
    if not rows:
        return None
    from edgenode.plots import plt, save_figure

    b1 = report.latency_batch
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"baseline": "*", "artifact": "o", "gpu": "s"}
    for row in rows:  # points share a legend rather than labels, which overlap when latencies are close
        if row.group != "sweep":
            ax.scatter(row.p50_ms(b1), row.accuracy.accuracy, marker=markers.get(row.group, "o"),
                       s=140 if row.group == "baseline" else 50, zorder=3, label=row.name)
    sweep: dict[str, list[BenchRow]] = {}
    for row in rows:
        if row.group == "sweep":
            sweep.setdefault(row.runtime, []).append(row)
    for k, (runtime, points) in enumerate(sweep.items()):
        points.sort(key=lambda r: r.steps or 0)
        line, = ax.plot([r.p50_ms(b1) for r in points], [r.accuracy.accuracy for r in points], "-o", alpha=0.7,
                        label=f"steps sweep ({runtime})")
        for r in points:  # one runtime's labels below its line, the next one's above: overlapping lines stay legible
            ax.annotate(f"N={r.steps}", (r.p50_ms(b1), r.accuracy.accuracy), textcoords="offset points",
                        xytext=(3, -10 if k % 2 == 0 else 5), fontsize=7, color=line.get_color())
    ax.set_xscale("log")
    plain_log_labels(ax.xaxis)
    ax.set(xlabel=f"latency p50 at batch {b1} (ms, log scale)", ylabel="accuracy (label-free top-1)",
           title=f"latency vs accuracy ({report.machine.get('cpu')}, {plural(report.machine.get('threads', 0), 'thread')})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, path)


def plot_steps_sweep(report: BenchReport, path: Path) -> Path | None:
    """RK4 steps N on x; batch-1 latency on the left axis, accuracy/agreement on the right."""
    rows = [r for r in report.rows if r.group == "sweep"]
    if not rows:
        return None
    from edgenode.plots import plt, save_figure

    b1 = report.latency_batch
    fig, ax = plt.subplots(figsize=(8, 5))
    right = ax.twinx()
    by_runtime: dict[str, list[BenchRow]] = {}
    for row in rows:
        by_runtime.setdefault(row.runtime, []).append(row)
    handles = []
    for runtime, points in by_runtime.items():
        points.sort(key=lambda r: r.steps or 0)
        steps = [r.steps for r in points]
        handles += ax.plot(steps, [r.p50_ms(b1) for r in points], "-o", label=f"latency ({runtime})")
    first = sorted(next(iter(by_runtime.values())), key=lambda r: r.steps or 0)
    if any(r.accuracy is not None for r in first):
        handles += right.plot([r.steps for r in first], [r.accuracy.accuracy if r.accuracy else float("nan") for r in first],
                              "--s", color="tab:green", label="accuracy")
    if any(r.agreement is not None for r in first):
        handles += right.plot([r.steps for r in first], [r.agreement if r.agreement is not None else float("nan") for r in first],
                              ":^", color="tab:red", label="agreement with baseline")
    base = report.baseline
    if base.accuracy is not None:
        right.axhline(base.accuracy.accuracy, color="tab:green", alpha=0.3, label="baseline accuracy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r.steps for r in rows}))
    ax.set_xticklabels([str(s) for s in sorted({r.steps for r in rows})])
    latencies = [r.p50_ms(b1) for r in rows if r.p50_ms(b1)]
    log_latency = bool(latencies) and max(latencies) > 20 * min(latencies)  # runtimes far apart: both readable
    if log_latency:
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
    ax.set(xlabel="RK4 steps N", ylabel=f"latency p50 at batch {b1} (ms{', log scale' if log_latency else ''})",
           title="steps sweep")
    right.set_ylabel("accuracy / agreement")
    right.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="center right")
    return save_figure(fig, path)


FIGURES = {"bench.png": plot_latency_accuracy, "steps_sweep.png": plot_steps_sweep}


def write_report(report: BenchReport, out: str | Path, figures: bool = True) -> list[Path]:
    """bench.json, bench.md, bench.png (latency vs accuracy, with data) and steps_sweep.png (with a sweep).

    Without ``figures`` (a report still being measured) the folder's figures are removed instead: an older bench's
    figures must not sit beside this one's numbers."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "bench.json", report.to_dict()),
             atomic_write_bytes(out / "bench.md", markdown(report).encode("utf-8"))]
    for name, plot in FIGURES.items():
        if not figures:
            (out / name).unlink(missing_ok=True)
            continue
        written = plot(report, out / name)
        if written is not None:
            files.append(written)
    report.files = files
    return files
