"""`edgenode verify`: golden replay passes on a fresh export and fails on a modified golden file or artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgenode.artifacts import read_sidecar, write_sidecar
from edgenode.cli import app
from edgenode.errors import EdgenodeError, UsageError
from edgenode.runtime.verify import DEFAULT_TOLERANCES, GoldenTolerance, compare_golden, verify_folder

EXPORT_FILES = {"fp32": "model-rk4x4-fp32.onnx", "fp16": "model-rk4x4-fp16.onnx", "int8": "model-rk4x4-int8-ort.onnx"}


@pytest.fixture(scope="module")
def export_dir(shared_exports) -> Path:
    """The folder of the session's FP32/FP16/INT8 RK4×4 exports (read-only)."""
    return shared_exports["fp32"].parent


@pytest.fixture()
def fresh(export_dir, tmp_path) -> Path:
    """A private copy of the export folder (artifacts, sidecars, golden files, reports)."""
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


def invoke(*args):
    return CliRunner().invoke(app, ["verify", *[str(a) for a in args]])


def test_fresh_export_verifies(fresh):
    result = invoke(fresh, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and {c["artifact"] for c in report["checks"]} == set(EXPORT_FILES.values())
    for check in report["checks"]:
        assert check["status"] == "passed" and check["n"] >= 8 and check["top1_agreement"] == 1.0
        assert check["max_abs_error"] <= check["tolerance"]["atol"]  # same runtime as the export: near-exact
        assert check["runtime"].startswith("onnxruntime")
    assert "Passed: 3/3" in result.stderr


def test_modified_golden_logits_fail(fresh):
    golden = fresh / (EXPORT_FILES["fp32"] + ".golden.npz")
    with np.load(golden) as archive:
        arrays = dict(archive)
    arrays["logits"][0, 0] += 0.05  # far above the FP32 tolerance, far below the INT8 one
    np.savez(golden, **arrays)
    result = invoke(fresh)
    assert result.exit_code == 1
    assert "model-rk4x4-fp32.onnx: max |Δlogit|" in result.stderr and "Passed: 2/3" in result.stderr
    assert "do not reproduce their golden logits: model-rk4x4-fp32.onnx" in result.stderr


def test_modified_artifact_with_a_valid_sidecar_fails(fresh):
    from onnx import numpy_helper

    path = fresh / EXPORT_FILES["fp32"]
    proto = onnx.load(str(path))
    bias = next(init for init in proto.graph.initializer if numpy_helper.to_array(init).shape == (6,))  # the head's
    shifted = numpy_helper.to_array(bias) + np.float32([0.01, 0, 0, 0, 0, 0])  # one class's logit moves by 0.01
    bias.CopyFrom(numpy_helper.from_array(shifted, bias.name))
    onnx.save(proto, str(path))
    record = {k: v for k, v in read_sidecar(path, verify=False).items() if k not in ("sha256", "file")}
    write_sidecar(path, record)  # loads fine: only what it computes changed
    report = verify_folder(fresh)
    check = {c.artifact: c for c in report.checks}[EXPORT_FILES["fp32"]]
    assert not report and not check and check.status == "failed" and check.max_abs_error == pytest.approx(0.01, rel=1e-3)
    assert DEFAULT_TOLERANCES["fp32"].atol < check.min_passing_atol <= check.max_abs_error  # how far off it is


def test_tampered_artifact_and_broken_golden_fail_without_stopping_the_others(fresh):
    target = fresh / EXPORT_FILES["fp16"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    (fresh / (EXPORT_FILES["int8"] + ".golden.npz")).write_bytes(b"not a zip")
    report = verify_folder(fresh)
    status = {c.artifact: c for c in report.checks}
    assert status[EXPORT_FILES["fp32"]].passed
    assert "does not match its sidecar" in status[EXPORT_FILES["fp16"]].reason
    assert "unreadable golden file" in status[EXPORT_FILES["int8"]].reason
    assert report.n_failed == 2 and not report
    result = invoke(fresh)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # damaged files are not a rounding difference: the advice to loosen the tolerances was wrong for them
    assert line.startswith("error: 2 artifact(s) could not be compared with their golden logits: ") and "copy it again, or export it again" in line
    assert "do not reproduce" not in line and "loosen" not in line


def test_a_nan_in_the_golden_file_and_a_runtime_error_fail_their_check(fresh, monkeypatch):
    """A NaN among the stored logits made every comparison with it false, so the check passed whatever the replay
    gave; an error of ONNX Runtime's own (not a ValueError) was a traceback that left the other files unchecked."""
    golden = fresh / (EXPORT_FILES["fp32"] + ".golden.npz")
    with np.load(golden) as archive:
        arrays = dict(archive)
    arrays["logits"][0, 0] = np.nan
    np.savez(golden, **arrays)

    class RuntimeFailure(Exception):  # like onnxruntime's Fail and InvalidArgument: no ValueError
        pass

    from edgenode.runtime.onnx_runner import OnnxRuntimeRunner

    original = OnnxRuntimeRunner._run

    def fail_fp16(self, x):
        if "fp16" in str(self.path):
            raise RuntimeFailure("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code\nsecond line")
        return original(self, x)

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", fail_fp16)
    status = {c.artifact: c for c in verify_folder(fresh).checks}
    assert status[EXPORT_FILES["fp32"]].status == "failed" and "golden file holds inf/NaN" in status[EXPORT_FILES["fp32"]].reason
    assert status[EXPORT_FILES["fp16"]].status == "failed"
    assert status[EXPORT_FILES["fp16"]].reason == "RuntimeFailure: [ONNXRuntimeError] : 1 : FAIL : Non-zero status code"
    assert status[EXPORT_FILES["int8"]].passed


def test_folder_without_golden_files_is_an_error(fresh, tmp_path):
    for golden in fresh.glob("*.golden.npz"):
        golden.unlink()
    with pytest.raises(EdgenodeError, match="no artifact with a golden file"):
        verify_folder(fresh)
    assert invoke(fresh).exit_code == 1


def test_missing_runtime_is_skipped_not_failed(fresh, monkeypatch):
    from edgenode.runtime import predictor as predictor_module
    from edgenode.runtime.providers import ProviderUnavailableError

    real = predictor_module.load_predictor

    def no_int8_runtime(path, **kwargs):
        if "int8" in Path(path).name:
            raise ProviderUnavailableError("pretend its runtime is missing")
        return real(path, **kwargs)

    monkeypatch.setattr(predictor_module, "load_predictor", no_int8_runtime)
    report = verify_folder(fresh)
    assert report and report.n_passed == 2
    skipped = {c.artifact: c for c in report.checks}[EXPORT_FILES["int8"]]
    assert skipped.status == "skipped" and skipped.precision == "int8"  # what its sidecar records, not "?"
    assert "skipped 1" in report.summary_line()

    def no_runtime(path, **kwargs):
        raise ProviderUnavailableError("pretend its runtime is missing")

    monkeypatch.setattr(predictor_module, "load_predictor", no_runtime)
    said = invoke(fresh).output
    assert said.count("pretend its runtime is missing") == 1  # one line naming every file, not one line each


def test_tolerances_per_precision_are_pure_and_documented():
    stored = np.array([[4.0, 1.0, 0.0], [2.0, 1.99, 0.0]])
    fp32, int8 = DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["int8"]
    assert fp32.atol == 1e-3 and int8.atol > DEFAULT_TOLERANCES["fp16"].atol > fp32.atol
    assert compare_golden(stored, stored + 5e-4, fp32)["ok"]
    too_far = compare_golden(stored, stored + [[0.1, 0, 0], [0, 0, 0]], fp32)
    assert not too_far["ok"] and "would pass with atol ≥ 0.096" in too_far["reason"]
    # INT8: a near-tie (2.0 vs 1.99) may flip, a decisive top-1 may not
    near_tie_flip = stored + [[0, 0, 0], [0, 0.05, 0]]
    assert compare_golden(stored, near_tie_flip, int8)["ok"]
    decisive_shift = stored + [[-0.2, 0.2, 0], [0, 0, 0]]
    assert compare_golden(stored, decisive_shift, GoldenTolerance(0.25, 0.0))["ok"]  # 3.8 vs 1.2: still top-1
    flipped = stored.copy()
    flipped[0] = [1.0, 4.0, 0.0]
    result = compare_golden(stored, flipped, GoldenTolerance(10.0, 0.0))  # within the logit tolerance ...
    assert result["ok"]  # ... and not decisive at that tolerance (margin 3 < 2·10)
    result = compare_golden(stored, flipped, GoldenTolerance(1.0, 0.0))
    assert not result["ok"] and "top-1 changed on 1 of 1 decisive" in result["reason"]
    assert not compare_golden(stored, np.full_like(stored, np.nan), int8)["ok"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e-3, "1e-3", None])
def test_a_tolerance_must_be_a_finite_number_at_least_zero(value):
    """NaN compares False with everything and inf allows anything: either would pass every artifact."""
    for name in ("atol", "rtol"):
        with pytest.raises(UsageError, match=f"--{name} .*: tolerances must be >= 0 and finite"):
            GoldenTolerance(**{"atol": 1e-3, "rtol": 1e-3, name: value})
    assert GoldenTolerance(0, 0.0) == GoldenTolerance(0.0, 0.0)  # zero is a (strict) tolerance


@pytest.mark.parametrize("args", [("--atol", "nan"), ("--rtol", "inf"), ("--atol", "-inf")])
def test_cli_refuses_a_tolerance_that_would_pass_anything(export_dir, args):
    result = invoke(export_dir, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {args[0]} {args[1]}: tolerances must be >= 0 and finite"), result.output
    assert "PASSED" not in result.output


def test_decisive_means_twice_the_allowance():
    # margin 1.0 < 2 * 0.6: a near-tie at this tolerance, so a flip within the logit tolerance passes
    result = compare_golden(np.array([[1.0, 0.0]]), np.array([[0.5, 0.51]]), GoldenTolerance(0.6, 0.0))
    assert result["ok"] and result["decisive"] == 0


def test_the_scale_is_each_samples_own_largest_logit():
    # row 0's scale is 10 (allowance 1.0), so a 0.5 change in its small logit passes; a per-column scale would not
    assert compare_golden(np.array([[10.0, 0.0], [0.0, 1.0]]), np.array([[10.0, 0.5], [0.0, 1.0]]), GoldenTolerance(0.0, 0.1))["ok"]


def test_an_exact_replay_passes_a_zero_tolerance():
    stored = np.array([[4.0, 1.0, 0.0], [2.0, 1.99, 0.0]])
    assert compare_golden(stored, stored.copy(), GoldenTolerance(0.0, 0.0))["ok"]


def test_a_report_of_skipped_checks_only_has_not_passed():
    from edgenode.runtime.verify import GoldenCheck, VerifyReport

    assert not VerifyReport("f", [GoldenCheck("a.onnx", None, "skipped")])


def test_default_tolerances_are_the_documented_ones():
    assert {k: (t.atol, t.rtol) for k, t in DEFAULT_TOLERANCES.items()} == {
        "fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2), "int8": (0.25, 0.10)}


def test_a_given_tolerance_replaces_the_default(fresh):
    golden = fresh / (EXPORT_FILES["fp32"] + ".golden.npz")
    with np.load(golden) as archive:
        arrays = dict(archive)
    arrays["logits"][0, 0] += 0.05  # fails the fp32 default (test_modified_golden_logits_fail)
    np.savez(golden, **arrays)
    assert verify_folder(fresh, tolerances={"fp32": GoldenTolerance(0.1, 0.0)}).passed


def test_what_verify_could_not_check_is_said(fresh):
    """A file without its sidecar passes on its replay, saying its bytes were not checked; a folder without the
    export's report may be an export that stopped part-way, and verify says so."""
    result = invoke(fresh)
    assert result.exit_code == 0 and "no export_report.json" not in result.output and "no sidecar" not in result.output
    (fresh / f"{EXPORT_FILES['fp32']}.json").unlink()
    (fresh / "export_report.json").unlink()
    result = invoke(fresh)
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"{EXPORT_FILES['fp32']}: no sidecar: its sha256 was not checked, only its replay" in said
    assert "holds no export_report.json: if an export stopped part-way" in said
