"""export_report.json / export_report.md: what was exported, from what, and how well each artifact agrees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgenode.artifacts import atomic_write_bytes, human_size, write_json

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"




def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    deploy = report["deployed"]
    lines = [
        f"# Export of {Path(report['checkpoint']['path']).name}",
        "",
        f"- Trained solver: {report['checkpoint']['solver']}",
        f"- Deployed: **{deploy['description']}** (steps: {deploy['steps_source']})",
        f"- Split manifest: {report['manifest']['sha256'][:16]}…, check images: {report['checks_on']}",
        f"- Exporter: {report['exporter']}, opset {report['opset']}",
    ]
    validity = report.get("ode_validity")
    if validity:
        verdict = "yes" if validity["ode_valid"] else "**NO** — " + "; ".join(validity["reasons"])
        lines.append(f"- Valid ODE (logits/accuracy converge over N, 2N, 4N and dopri5 tolerances): {verdict}")
    if report.get("step_sweep"):
        lines.append(f"- Step count chosen by sweep: see steps_sweep.md (chosen N={report['step_sweep']['chosen']})")
    lines += [
        "",
        "| artifact | precision | size | vs torch max abs Δ | top-1 agreement with FP32 | val accuracy | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for art in report["artifacts"]:
        checks = art.get("checks", {})
        lines.append(
            f"| {art['file']} | {art['precision']}{'/' + art['int8_target'] if art.get('int8_target') else ''} "
            f"| {human_size(art['size_bytes'])} | {_fmt(checks.get('max_abs_error_vs_torch'))} "
            f"| {_fmt(checks.get('agreement_with_fp32'))} | {_fmt(checks.get('val_accuracy'))} | {art.get('note', '')} |"
        )
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", f"Total time {report['elapsed_s']:.1f} s.", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> list[Path]:
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / REPORT_JSON, report)
    md_path = atomic_write_bytes(out_dir / REPORT_MD, render_markdown(report).encode("utf-8"))
    return [json_path, md_path]
