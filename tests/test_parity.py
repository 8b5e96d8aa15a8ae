"""`edgenode parity`: passes for faithful exports, fails (exit 1) for corrupted ones and too-tight thresholds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgenode.artifacts import read_sidecar, write_sidecar
from edgenode.checkpoint import load_checkpoint, save_checkpoint
from edgenode.cli import app
from edgenode.errors import ArtifactError, UsageError
from edgenode.export.metadata import FULL_RECORD_KEY, ArtifactMetadata
from edgenode.model import preset_config
from edgenode.ode.solvers import SolverConfig
from edgenode.parity import ParityConfig, ParityThresholds, compare_logits, run_parity

EXPORT_FILES = {"fp32": "model-rk4x4-fp32.onnx", "fp16": "model-rk4x4-fp16.onnx", "int8": "model-rk4x4-int8-ort.onnx"}


@pytest.fixture(scope="module")
def export_dir(shared_exports) -> Path:
    """The folder of the session's FP32/FP16/INT8 RK4×4 exports (read-only)."""
    return shared_exports["fp32"].parent


def copy_artifact(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (src.name, src.name + ".json"):
        shutil.copy(src.parent / name, folder / name)
    return folder / src.name


def rewrite_onnx(src: Path, dst: Path, scale: float = 0.0, metadata_changes: dict | None = None) -> Path:
    """A copy of ``src`` with its float weights scaled by (1 + scale·noise) and/or its metadata changed,
    re-written with a *valid* sidecar: it loads fine, only its content is wrong."""
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    rng = np.random.default_rng(0)
    if scale:
        for init in proto.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32 and array.size > 16:
                noisy = (array * (1 + scale * rng.standard_normal(array.shape))).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    record = {k: v for k, v in read_sidecar(src).items() if k not in ("sha256", "file")}
    record.update(metadata_changes or {})
    meta = ArtifactMetadata.from_dict(record)
    props = meta.to_onnx_props()
    for prop in proto.metadata_props:
        if prop.key in props:
            prop.value = props[prop.key]
    assert any(p.key == FULL_RECORD_KEY for p in proto.metadata_props)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dst))
    write_sidecar(dst, meta.to_dict())
    return dst


def invoke(*args):
    return CliRunner().invoke(app, ["parity", *[str(a) for a in args]])


def parity_args(trained_run, synthetic_root, out: Path, *extra):
    return ["--reference", trained_run.best_checkpoint, "--data", synthetic_root, "--out", out, *extra]


# --- the CLI as a deployment gate ---------------------------------------------------------------------------


def test_fp32_export_passes_and_writes_the_report(export_dir, trained_run, synthetic_root, tmp_path):
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    out = tmp_path / "report"
    result = invoke(artifact, *parity_args(trained_run, synthetic_root, out))
    assert result.exit_code == 0, result.output
    assert "Passed: 1/1" in result.stderr and "PASSED" in result.stderr
    assert {p.name for p in out.iterdir()} == {"parity.json", "parity.md", "agreement.png", "logit_error_hist.png", "disagreements.png"}
    report = json.loads((out / "parity.json").read_text())
    row = report["results"][0]
    assert report["passed"] and row["passed"] and row["agreement"] == 1.0 and row["nonfinite"] == 0
    assert row["accuracy_delta_pt"] == 0.0 and row["precision"] == "fp32" and row["steps"] == 4
    assert 0 < row["max_abs_logit_error"] < 1e-2 and row["reference_accuracy"] > 1 / 6
    assert report["reference"]["solver"] == "dopri5 (rtol=1e-06, atol=1e-06)" and report["data"]["n"] == 24
    stages = {s["stage"]: s for s in row["attribution"]}
    assert list(stages) == ["solver", "export", "precision", "runtime", "total"]
    assert stages["export"]["diff"]["max_abs_logit_error"] < 1e-4  # ONNX FP32 = torch RK4×4
    assert stages["precision"]["diff"] is None and "is the FP32 ONNX" in stages["precision"]["reason"]
    assert stages["total"]["diff"]["max_abs_logit_error"] == pytest.approx(row["max_abs_logit_error"])
    markdown = (out / "parity.md").read_text()
    assert "| Artifact | Precision | Steps | Size |" in markdown and "PASSED" in markdown and "Error attribution" in markdown
    assert "| solver |" in markdown


def test_a_reference_tolerance_too_tight_to_solve_is_named_not_blamed_on_the_checkpoint(export_dir, trained_run, synthetic_root, tmp_path):
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    result = invoke(artifact, *parity_args(trained_run, synthetic_root, tmp_path / "report", "--reference-tol", "1e-30"))
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: --reference-tol 1e-30: dopri5 cannot reach it on best.pt (its step size underflows) "
        "(pass a larger --reference-tol, such as the default 1e-06)"), result.output


def test_corrupted_weights_fail_with_exit_1(export_dir, trained_run, synthetic_root, tmp_path):
    broken = rewrite_onnx(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp" / "model-rk4x4-fp32.onnx", scale=1.0)
    out = tmp_path / "report"
    result = invoke(broken, *parity_args(trained_run, synthetic_root, out, "--no-attribution"))
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stderr and "Passed: 0/1" in result.stderr and "fail parity" in result.stderr
    row = json.loads((out / "parity.json").read_text())["results"][0]
    assert not row["passed"] and row["agreement"] < 0.99 and row["failures"]
    assert row["min_passing"]["min_agreement_pct"] == pytest.approx(100 * row["agreement"])


def test_a_threshold_set_too_tight_fails(export_dir, trained_run, synthetic_root, tmp_path):
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    out = tmp_path / "report"
    result = invoke(artifact, *parity_args(trained_run, synthetic_root, out, "--no-attribution", "--max-logit-error", "1e-12"))
    assert result.exit_code == 1 and "max |Δlogit|" in result.stderr
    row = json.loads((out / "parity.json").read_text())["results"][0]
    assert row["agreement"] == 1.0 and not row["passed"]
    # the report says which bound would have passed: exactly the error it measured
    assert row["min_passing"]["max_logit_error"] == row["max_abs_logit_error"] > 1e-12
    assert row["thresholds"]["max_logit_error"] == 1e-12


def test_tampered_file_is_refused(export_dir, trained_run, synthetic_root, tmp_path):
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    data = bytearray(artifact.read_bytes())
    data[-200] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = invoke(artifact, *parity_args(trained_run, synthetic_root, tmp_path / "report"))
    assert result.exit_code == 1 and "does not match its sidecar" in result.stderr
    assert "Traceback" not in result.output


def test_mismatched_inputs_are_refused_with_what_differs(export_dir, trained_run, synthetic_root, tmp_path):
    fp32 = export_dir / EXPORT_FILES["fp32"]
    result = invoke(fp32, *parity_args(trained_run, synthetic_root, tmp_path / "r")[:0],
                    "--reference", fp32, "--data", synthetic_root)
    assert result.exit_code == 2 and "--reference needs a training checkpoint" in result.stderr  # wrong kind: bad argument

    other = rewrite_onnx(fp32, tmp_path / "other" / fp32.name,
                         metadata_changes={"manifest_sha256": "f" * 64, "classes": [f"P{i}" for i in range(6)]})
    result = invoke(other, *parity_args(trained_run, synthetic_root, tmp_path / "r"))
    assert result.exit_code == 1 and "does not match the reference" in result.stderr
    assert "manifest ffffffffffff" in result.stderr and "same number but other names/order" in result.stderr

    from edgenode.data import Manifest

    manifest = Manifest.load(Path(trained_run.run_dir) / "manifest.json")
    manifest.splits["test"] = manifest.splits["test"][:-1]
    stale = manifest.save(tmp_path / "stale-manifest.json")
    result = invoke(fp32, *parity_args(trained_run, synthetic_root, tmp_path / "r", "--manifest", stale))
    assert result.exit_code == 1 and "is not the split best.pt was trained on" in result.stderr


def test_an_engine_named_explicitly_must_run(export_dir, trained_run, synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = fake_engine(tmp_path, export_dir / EXPORT_FILES["fp16"])
    result = invoke(engine, *parity_args(trained_run, synthetic_root, tmp_path / "r"))
    assert result.exit_code == 1 and "needs the tensorrt Python package" in result.stderr


# --- the Python API: a folder, attribution, fixed-step references -------------------------------------------


def fake_engine(folder: Path, like: Path) -> Path:
    """An opaque .engine with a valid sidecar (as a GPU machine's export would leave it)."""
    engine = folder / "model-rk4x4-fp16.engine"
    engine.write_bytes(b"\x00opaque TensorRT plan" * 64)
    record = {k: v for k, v in read_sidecar(like).items() if k not in ("sha256", "file")}
    write_sidecar(engine, {**record, "kind": "engine", "extra": {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}})
    return engine


def test_export_folder_gives_one_table_and_attributes_precision_error(export_dir, trained_run, synthetic_root, tmp_path,
                                                                       monkeypatch):
    folder = tmp_path / "exp"
    for key in ("fp32", "fp16", "int8"):
        copy_artifact(export_dir / EXPORT_FILES[key], folder)
    (folder / "notes.txt").write_text("not an artifact")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT here: the engine is skipped, not failed
    engine = fake_engine(folder, folder / EXPORT_FILES["fp16"])
    report = run_parity(ParityConfig(artifacts=(str(folder),), reference=str(trained_run.best_checkpoint),
                                     data=str(synthetic_root), out=str(tmp_path / "report")))
    assert [r.name for r in report.results] == sorted(EXPORT_FILES.values())
    by_precision = {r.precision: r for r in report.results}
    assert by_precision["int8"].max_drop_pt == 1.0 and by_precision["int8"].min_agreement_pct == 97.0
    assert by_precision["fp16"].max_drop_pt == 0.5 and by_precision["fp16"].min_agreement_pct == 99.0
    assert by_precision["fp32"].passed and by_precision["fp16"].diff.agreement >= 0.95
    for precision in ("fp16", "int8"):
        stages = {s.stage: s for s in by_precision[precision].attribution}
        assert stages["precision"].a == EXPORT_FILES["fp32"]  # found in the folder by its metadata
        assert stages["precision"].diff.max_abs_logit_error > 0
        assert stages["export"].diff.max_abs_logit_error < 1e-4
    assert by_precision["int8"].diff.max_abs_logit_error > by_precision["fp16"].diff.max_abs_logit_error
    passed = sum(r.passed for r in report.results)
    # the engine is not compared, so it is not passed: the verdict line says so, and so does the table
    assert report.summary_line().endswith(f"vs. 3 artifacts | Passed: {passed}/3 | skipped 1")
    assert [Path(a).name for a, _ in report.skipped] == [engine.name] and "tensorrt" in report.skipped[0][1]
    from rich.console import Console

    from edgenode.parity.report import rich_table

    console = Console(width=400, record=True)
    console.print(rich_table(report))
    assert any(engine.name in line and "skipped: " in line for line in console.export_text().splitlines())
    narrow = Console(width=80, record=True)  # a terminal's width: names fold over lines, never end in "…"
    narrow.print(rich_table(report))
    cells = "".join(line.split("│")[1].strip() if "│" in line else "" for line in narrow.export_text().splitlines())
    assert "…" not in narrow.export_text() and all(name in cells for name in EXPORT_FILES.values())
    markdown = (tmp_path / "report" / "parity.md").read_text()
    assert all(name in markdown for name in EXPORT_FILES.values())


def test_fp16_alone_rebuilds_its_fp32_twin_in_memory(export_dir, trained_run, synthetic_root, tmp_path):
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp16"], tmp_path / "alone")
    report = run_parity(ParityConfig(artifacts=(str(artifact),), reference=str(trained_run.best_checkpoint),
                                     data=str(synthetic_root), out=None))
    stages = {s.stage: s for s in report.results[0].attribution}
    assert "rebuilt in memory" in stages["precision"].a and stages["precision"].diff is not None
    assert stages["export"].diff.max_abs_logit_error < 1e-4


def test_fixed_step_checkpoint_is_compared_with_an_adaptive_reference(export_dir, trained_run, synthetic_root, tmp_path):
    ckpt = load_checkpoint(trained_run.best_checkpoint)
    ckpt.model_config = preset_config("odenet", 6, width=ckpt.model_config.width, solver=SolverConfig("rk4", n_steps=4))
    run = tmp_path / "rk4-run"
    run.mkdir()
    shutil.copy(Path(trained_run.run_dir) / "manifest.json", run / "manifest.json")
    path = save_checkpoint(run / "best.pt", ckpt)
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    report = run_parity(ParityConfig(artifacts=(str(artifact),), reference=str(path), data=str(synthetic_root),
                                     attribution=False, allow_other_reference=True))  # the export came from best.pt
    assert report.reference["solver"].startswith("dopri5") and report.reference["trained_solver"] == "rk4 × 4 steps"
    assert any("trained with a fixed-step solver" in note for note in report.notes)
    assert not any("replaces the trained" in note for note in report.notes)  # the same fact once, not twice
    assert any("compared on purpose" in note for note in report.results[0].notes)
    kept = run_parity(ParityConfig(artifacts=(str(artifact),), reference=str(path), data=str(synthetic_root),
                                   reference_solver=None, attribution=False, allow_other_reference=True))
    assert kept.reference["solver"] == "rk4 × 4 steps" and kept.results[0].diff.max_abs_logit_error < 1e-4
    # the adaptive reference is really solved with dopri5: the RK4 × 4 export sits measurably off it (8e-4 measured),
    # not at the float noise (1e-7) it shows against its own trained solver
    adaptive, fixed = report.results[0].diff.max_abs_logit_error, kept.results[0].diff.max_abs_logit_error
    assert adaptive > max(1e-5, 10 * fixed)


def test_an_export_of_another_checkpoint_fails_unless_allowed(export_dir, trained_run, synthetic_root, tmp_path):
    """Same split, classes and weights, another file (here: another epoch number): every input check passes,
    so only the source checkpoint's sha256 can tell. Without --allow-other-reference it fails, naming both."""
    ckpt = load_checkpoint(trained_run.best_checkpoint)
    ckpt.epoch += 1
    run = tmp_path / "other-run"
    run.mkdir()
    shutil.copy(Path(trained_run.run_dir) / "manifest.json", run / "manifest.json")
    other = save_checkpoint(run / "best.pt", ckpt)
    other_sha, source_sha = load_checkpoint(other).sha256, load_checkpoint(trained_run.best_checkpoint).sha256
    assert other_sha != source_sha
    artifact = copy_artifact(export_dir / EXPORT_FILES["fp32"], tmp_path / "exp")
    args = ["--reference", other, "--data", synthetic_root, "--reference-solver", "trained", "--no-attribution"]

    # the only artifact is not the reference's: the wrong --reference, refused before any image is read or solved
    refused = invoke(artifact, *args, "--out", tmp_path / "p1")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    (line,) = [line for line in refused.stderr.splitlines() if line.strip()]
    assert (f"error: {other}: {artifact.name} was not exported from this checkpoint (sha256 {other_sha[:12]}…) but from "
            f"{source_sha[:12]}…") in line and "pass that checkpoint as --reference" in line
    assert not (tmp_path / "p1").exists()

    # beside an export of the reference, it fails on its own row, naming both checkpoints
    ours = rewrite_onnx(artifact, tmp_path / "exp2" / "model-rk4x4-fp32.onnx", metadata_changes={"source_checkpoint_sha256": other_sha})
    mixed = invoke(artifact, ours, *args, "--out", tmp_path / "p1")
    assert mixed.exit_code == 1 and "Traceback" not in mixed.output
    (line,) = [line for line in mixed.stderr.splitlines() if line.startswith("error:")]
    assert f"exported from checkpoint {source_sha[:12]}…, not from the reference best.pt ({other_sha[:12]}…)" in line
    assert "pass the checkpoint the artifacts were exported from as --reference, or --allow-other-reference" in line
    theirs, matching = json.loads((tmp_path / "p1" / "parity.json").read_text())["results"]
    assert not theirs["passed"] and theirs["agreement"] == 1.0  # the numbers alone would have passed: same weights
    assert theirs["failures"] == [theirs["other_checkpoint"]] and matching["passed"]

    allowed = invoke(artifact, *args, "--out", tmp_path / "p2", "--allow-other-reference")
    assert allowed.exit_code == 0, allowed.output
    warnings = [line for line in allowed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and source_sha[:12] in warnings[0] and "--allow-other-reference" in warnings[0]
    assert "Passed: 1/1" in allowed.stderr


def test_attribution_on_a_gpu_provider_judges_precision_on_the_cpu(export_dir, trained_run, synthetic_root):
    from edgenode.parity import diff_logits
    from edgenode.parity.attribution import Attributor
    from edgenode.runtime import load_predictor

    reference = load_predictor(trained_run.best_checkpoint, reference_solver=SolverConfig("rk4", n_steps=8))
    fp16 = load_predictor(export_dir / EXPORT_FILES["fp16"])
    x = fp16.preprocess(sorted(synthetic_root.glob("images/*/*.png"))[::12])
    ref, on_cpu = reference.predict_logits(x), fp16.predict_logits(x)
    on_gpu = on_cpu + np.float32(0.01)  # what a GPU provider might return
    fp16.runner.provider = "cuda"  # as if it had run there
    stages = {s.stage: s for s in Attributor(reference, ref, x).stages(fp16, on_gpu, [export_dir / EXPORT_FILES["fp32"]])}
    assert stages["precision"].a == EXPORT_FILES["fp32"] and stages["precision"].b.endswith("(cpu)")
    fp32 = load_predictor(export_dir / EXPORT_FILES["fp32"]).predict_logits(x)
    assert stages["precision"].diff == diff_logits(fp32, on_cpu)
    assert stages["runtime"].a.endswith("(cpu)") and stages["runtime"].b.endswith("(cuda)")
    assert stages["runtime"].diff.max_abs_logit_error == pytest.approx(0.01, rel=1e-3)
    assert stages["total"].diff == diff_logits(ref, on_gpu)


# --- results that judge themselves --------------------------------------------------------------------------


def test_an_accuracy_drop_alone_fails_parity():
    """The drop criterion on its own: 4 of 500 answers go from right to wrong, -0.8 pt at 99.2 % agreement, so
    FP32's 99 % agreement bound holds and only its 0.5 pt drop bound can fail it."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 100)
    reference = rng.standard_normal((500, 5)).astype(np.float32)
    reference[np.arange(500), labels] += 4.0
    candidate = reference.copy()
    flip = np.flatnonzero(reference.argmax(1) == labels)[:4]
    candidate[flip, labels[flip]] -= 20.0
    result = compare_logits(reference, candidate, labels, list("abcde"), name="x.onnx", precision="fp32")
    assert result.diff.agreement == pytest.approx(0.992) and result.accuracy_delta_pt == pytest.approx(-0.8)
    assert result.failures() == ["accuracy drop 0.80 pt > 0.5 pt"]
    assert compare_logits(reference, candidate, labels, list("abcde"), name="x.onnx", precision="fp32",
                          thresholds=ParityThresholds(max_drop_pt=0.8))


def test_parity_result_judges_itself():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    reference = rng.standard_normal((100, 4)).astype(np.float32)
    reference[np.arange(100), labels] += 3.0  # the reference is right on most samples
    candidate = reference.copy()
    flip = np.flatnonzero(reference.argmax(1) == labels)[:2]
    candidate[flip, labels[flip]] -= 10.0  # two correct answers become wrong: -2 pt, 98 % agreement
    classes = ["a", "b", "c", "d"]
    result = compare_logits(reference, candidate, labels, classes, name="x.onnx", precision="fp16")
    assert not result and result.verdict == "FAILED"
    assert result.accuracy_delta_pt == pytest.approx(-2.0) and result.diff.agreement == pytest.approx(0.98)
    assert result.min_passing["max_drop_pt"] == pytest.approx(2.0) and result.min_passing["min_agreement_pct"] == pytest.approx(98.0)
    assert [c.name for c in result.class_changes] == sorted({classes[i] for i in labels[flip]})
    assert compare_logits(reference, candidate, labels, classes, name="x.onnx", precision="int8",
                          thresholds=ParityThresholds(int8_max_drop_pt=2.0, int8_min_agreement_pct=98.0))
    assert compare_logits(reference, reference, labels, classes, name="same")
    broken = candidate.copy()
    broken[5, 0] = np.nan
    nan_result = compare_logits(reference, broken, labels, classes, name="nan",
                                thresholds=ParityThresholds(max_drop_pt=100, min_agreement_pct=0))
    assert not nan_result and nan_result.diff.nonfinite == 1 and "inf/NaN" in nan_result.failures()[0]
    assert nan_result.diff.agreement == pytest.approx(0.97), "a NaN row counts as disagreeing"
    shifted = reference.copy()
    shifted[:, 0] += 0.01  # every logit error is 0.01 (to float32 rounding)
    for bound, holds in ((0.009, False), (0.011, True)):
        judged = compare_logits(reference, shifted, labels, classes, name="shifted",
                                thresholds=ParityThresholds(max_logit_error=bound, min_agreement_pct=0, max_drop_pt=100))
        assert bool(judged) is holds and judged.diff.max_abs_logit_error == pytest.approx(0.01, abs=1e-5)
    with pytest.raises(UsageError, match=r"--min-agreement must be a percentage in \[0, 100\], got 101"):
        ParityThresholds(min_agreement_pct=101)


def test_a_better_artifact_asks_for_no_drop_bound_and_the_worst_class_comes_first():
    """An artifact that gains accuracy passes at a drop bound of 0, not a negative one (which --max-drop
    refuses); the classes that changed are listed worst first, as the table shows them."""
    labels = np.repeat(np.arange(3), 10)
    reference = np.zeros((30, 3), dtype=np.float32)
    reference[np.arange(30), labels] = 1.0
    reference[[0, 1], 1] = 2.0  # the reference misses two of class a
    candidate = reference.copy()
    candidate[[0, 1], 1] = 0.0  # the artifact gets them right...
    candidate[[10], 2] = 2.0  # ...and misses one of class b
    result = compare_logits(reference, candidate, labels, ["a", "b", "c"], name="x.onnx",
                            thresholds=ParityThresholds(min_agreement_pct=0))
    assert result.accuracy_delta_pt == pytest.approx(100 / 30) and result.min_passing["max_drop_pt"] == 0.0
    assert [(c.name, round(c.delta_pt)) for c in result.class_changes] == [("b", -10), ("a", 20)]


def test_a_report_with_one_failing_artifact_has_not_passed(tmp_path):
    """`parity.json`'s "passed" is what CI scripts read: one failing artifact of two makes it false."""
    from edgenode.parity.run import ParityReport

    labels = np.repeat(np.arange(2), 10)
    reference = np.eye(2, dtype=np.float32)[labels]
    worse = reference.copy()
    worse[:5] = worse[:5, ::-1]  # five of class 0 now wrong
    good = compare_logits(reference, reference, labels, ["a", "b"], name="fp32.onnx")
    bad = compare_logits(reference, worse, labels, ["a", "b"], name="int8.onnx", precision="int8")
    report = ParityReport(reference={"path": "best.pt", "solver": "dopri5"}, data={}, thresholds=ParityThresholds(),
                          results=[good, bad])
    assert good and not bad
    assert not report and report.n_passed == 1 and report.failing == [bad]
    assert report.to_dict()["passed"] is False and report.to_dict()["n_passed"] == 1
    assert report.summary_line().endswith("Passed: 1/2")


def test_reference_with_no_artifact_or_folder_without_artifacts(trained_run, synthetic_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no .onnx or .engine files"):
        run_parity(ParityConfig(artifacts=(str(empty),), reference=str(trained_run.best_checkpoint), data=str(synthetic_root)))


def test_every_session_is_closed_when_a_later_artifact_fails(export_dir, trained_run, synthetic_root, monkeypatch):
    """A run that ends in an error (here: the second artifact is refused) closes the reference and every artifact
    it opened: in a notebook or the demo, an engine would otherwise keep its GPU memory."""
    import edgenode.parity.run as parity_run

    opened, load = [], parity_run.load_predictor

    def recording(*args, **kwargs):
        opened.append(load(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(parity_run, "load_predictor", recording)
    checked = []

    def refuse_the_second(info, reference):
        checked.append(info.path.name)
        if len(checked) == 2:
            raise ArtifactError(f"{info.path.name}: refused for the test")

    monkeypatch.setattr(parity_run, "check_compatible", refuse_the_second)
    artifacts = (str(export_dir / EXPORT_FILES["fp32"]), str(export_dir / EXPORT_FILES["fp16"]))
    with pytest.raises(ArtifactError, match="refused for the test"):
        run_parity(ParityConfig(artifacts=artifacts, reference=str(trained_run.best_checkpoint), data=str(synthetic_root), out=None))
    assert [p.metadata.kind for p in opened] == ["checkpoint", "onnx", "onnx"]
    assert opened[0].runner.model is None and all(p.runner.session is None for p in opened[1:])


def test_run_logits_names_a_runtime_error_and_times_without_the_warm_up_batch():
    """A runtime's own error (not an edgenode one) was a traceback; and the first batch, which pays for the warm-up
    (on ONNX Runtime's TensorRT provider, the engine build), was averaged into the latency."""
    import types

    from edgenode.errors import ArtifactError
    from edgenode.parity.run import run_logits

    class Fake:
        metadata = types.SimpleNamespace(path=Path("model.onnx"), num_classes=2)
        runner = types.SimpleNamespace(describe=lambda: "onnxruntime cpu")
        last_inference_ms = 0.0

        def __init__(self, times, fail=False):
            self.times, self.fail = list(times), fail

        def predict_logits(self, x):
            if self.fail:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION\nmore")
            self.last_inference_ms = self.times.pop(0)
            return np.zeros((len(x), 2), np.float32)

    x = np.zeros((10, 3, 4, 4), np.float32)
    logits, ms = run_logits(Fake([500.0, 8.0, 8.0]), x, batch_size=4)  # batches of 4, 4 and 2
    assert logits.shape == (10, 2) and ms == pytest.approx(16.0 / 6)
    assert run_logits(Fake([12.0]), x[:3], batch_size=4)[1] == pytest.approx(4.0)  # one batch: it is the timing
    with pytest.raises(ArtifactError) as info:
        run_logits(Fake([], fail=True), x, batch_size=4)
    assert str(info.value).startswith("model.onnx: failed on onnxruntime cpu (RuntimeError: [ONNXRuntimeError] : 6")
    assert "\n" not in str(info.value) and "edgenode verify" in str(info.value)


def test_the_early_refusal_waits_for_the_rows_when_a_skipped_engine_may_be_the_references():
    from types import SimpleNamespace

    from edgenode.parity.run import refuse_other_sources

    reference = SimpleNamespace(path=Path("run/best.pt"), sha256="a" * 64)
    foreign = [SimpleNamespace(path=Path(f"exp/m{i}.onnx"), source_checkpoint_sha256="b" * 64) for i in range(4)]
    with pytest.raises(UsageError, match=r"none of the 4 artifacts \(m0.onnx, m1.onnx, m2.onnx, …\) was exported from this checkpoint") as refused:
        refuse_other_sources(foreign, reference)
    assert "but from bbbbbbbbbbbb…" in refused.value.message
    refuse_other_sources(foreign, reference, skipped=1)  # an engine that cannot run here may be the reference's export
    refuse_other_sources([*foreign, SimpleNamespace(path=Path("exp/ours.onnx"), source_checkpoint_sha256="a" * 64)], reference)
    refuse_other_sources([], reference)


def test_export_stage_compares_the_torch_twin_with_the_fp32_onnx(export_dir, trained_run, synthetic_root):
    from edgenode.parity import diff_logits
    from edgenode.parity.attribution import Attributor
    from edgenode.runtime import load_predictor
    from edgenode.runtime.torch_runner import TorchRunner

    reference = load_predictor(trained_run.best_checkpoint, reference_solver=SolverConfig("rk4", n_steps=8))
    fp16 = load_predictor(export_dir / EXPORT_FILES["fp16"])
    x = fp16.preprocess(sorted(synthetic_root.glob("images/*/*.png"))[::12])
    ref, logits = reference.predict_logits(x), fp16.predict_logits(x)
    stages = {s.stage: s for s in Attributor(reference, ref, x).stages(fp16, logits, [export_dir / EXPORT_FILES["fp32"]])}
    twin = TorchRunner(reference.runner.model.with_solver(fp16.metadata.solver), "cpu").infer(x)
    fp32 = load_predictor(export_dir / EXPORT_FILES["fp32"]).predict_logits(x)
    assert stages["export"].diff == diff_logits(twin, fp32)
