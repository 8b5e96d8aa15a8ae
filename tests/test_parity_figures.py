"""Parity's figures and reports for a reader: broken candidates' figures and what parity.json records, what
parity.md and the plots say of each artifact, the memoised reference and what a run refuses."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from edgenode.ode.solvers import SolverConfig
from edgenode.parity import ParityConfig, ParityThresholds, compare_logits, diff_logits
from edgenode.parity.run import ParityReport


def test_a_candidate_with_no_finite_row_reports_infinite_logit_error():
    """All-inf/NaN candidate logits: no finite row to measure, so the logit errors are inf and the probability
    errors 1 — never 0, which would read as a perfect export in parity.json and in min_passing."""
    reference = np.eye(3, dtype=np.float32)
    candidate = np.full((3, 3), np.nan, dtype=np.float32)
    diff = diff_logits(reference, candidate)
    assert diff.nonfinite == 3 and diff.agreement == 0.0
    assert diff.max_abs_logit_error == float("inf") and diff.mean_abs_logit_error == float("inf")
    assert diff.max_abs_prob_error == 1.0 and diff.mean_abs_prob_error == 1.0
    result = compare_logits(reference, candidate, np.arange(3), list("abc"), name="broken.onnx")
    assert result.min_passing["max_logit_error"] == float("inf")
    empty = diff_logits(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert (empty.n, empty.agreement, empty.max_abs_logit_error, empty.nonfinite) == (0, 1.0, 0.0, 0)


def test_an_inf_or_nan_row_is_wrong_even_for_a_picture_of_class_0():
    """A row with inf/NaN logits is no answer: scored as wrong whatever the label, also for class 0 (the class an
    argmax of a NaN row, or a placeholder prediction of 0, would name)."""
    labels = np.array([0, 0, 1, 2])
    reference = np.eye(3, dtype=np.float32)[labels] * 5
    candidate = reference.copy()
    candidate[0] = np.nan
    candidate[1, 1] = np.inf  # the inf is on a wrong class: its argmax would be wrong anyway; row 0 is the test
    result = compare_logits(reference, candidate, labels, list("abc"), name="broken.onnx",
                            thresholds=ParityThresholds(max_drop_pt=100, min_agreement_pct=0))
    assert result.reference_correct == 4 and result.correct == 2
    assert result.accuracy == pytest.approx(0.5) and result.accuracy_delta_pt == pytest.approx(-50.0)
    assert [(c.name, c.n, c.accuracy) for c in result.class_changes] == [("a", 2, 0.0)]


def test_parity_json_records_each_figure_under_its_own_name():
    """The record of one result: the artifact's own accuracy interval (not the reference's) and the mean
    probability error (not the max) under their keys."""
    from edgenode.metrics import wilson_interval

    labels = np.repeat(np.arange(2), 10)
    reference = np.eye(2, dtype=np.float32)[labels] * 3
    candidate = reference.copy()
    candidate[:4] = candidate[:4, ::-1]  # four of class 0 now wrong
    candidate[10:, 1] += 0.5  # and some probability error that is not the maximum everywhere
    record = compare_logits(reference, candidate, labels, ["a", "b"], name="x.onnx",
                            thresholds=ParityThresholds(max_drop_pt=100, min_agreement_pct=0)).to_dict()
    assert record["reference_accuracy_ci"] == list(wilson_interval(20, 20))
    assert record["accuracy_ci"] == list(wilson_interval(16, 20)) != record["reference_accuracy_ci"]
    assert record["mean_abs_prob_error"] < record["max_abs_prob_error"]
    assert record["max_abs_logit_error"] == pytest.approx(3.0) and record["mean_abs_logit_error"] < 3.0


def test_a_logit_bound_of_zero_is_accepted_and_demands_identical_logits():
    """--max-logit-error 0 is a valid bound (bit-identical logits); only a negative one is refused."""
    from edgenode.errors import UsageError

    labels = np.arange(3)
    reference = np.eye(3, dtype=np.float32)
    strict = ParityThresholds(max_logit_error=0.0)
    assert compare_logits(reference, reference.copy(), labels, list("abc"), name="same.onnx", thresholds=strict)
    shifted = reference + np.float32(1e-3)
    shifted[:, 1] += np.float32(1e-3)
    assert not compare_logits(reference, shifted, labels, list("abc"), name="near.onnx", thresholds=strict)
    with pytest.raises(UsageError, match="--max-logit-error must be >= 0"):
        ParityThresholds(max_logit_error=-1e-6)


CLASSES = ["a", "b", "c", "d"]


def _report(results, skipped=()):
    reference = {"path": "run/best.pt", "sha256": "a" * 64, "solver": "dopri5 (rtol=1e-06, atol=1e-06)",
                 "trained_solver": "dopri5", "runtime": "torch cpu", "classes": CLASSES}
    data = {"split": "test", "manifest": "run/manifest.json", "manifest_sha256": "b" * 64, "n": results[0].n}
    return ParityReport(reference=reference, data=data, thresholds=ParityThresholds(), results=list(results),
                        skipped=list(skipped))


def _logits():
    labels = np.repeat(np.arange(4), 25)
    reference = np.eye(4, dtype=np.float32)[labels] * 4
    candidate = reference.copy()
    candidate[[0, 1, 2], 0] = 0.0  # three of class a now answer b (disagree, and wrong)
    candidate[[0, 1, 2], 1] = 4.0
    return reference, candidate, labels


def test_the_markdown_counts_the_disagreements_and_names_why_it_fails():
    """Each artifact's section says how many of the n pictures got another top-1 than the reference, and a
    failing one says which criteria failed; files that were not compared are listed as skipped."""
    from edgenode.parity.report import markdown

    reference, candidate, labels = _logits()
    result = compare_logits(reference, candidate, labels, CLASSES, name="model-int8.onnx", precision="fp32")
    assert not result and result.diff.agreement_pct == 97.0
    text = markdown(_report([result], skipped=[("exp/model-fp16.engine", "TensorRT is not installed")]))
    assert "Top-1 agreement 97.00 % (3 of 100 differ)" in text
    assert "- **Fails:** accuracy drop 3.00 pt > 0.5 pt; agreement 97.00 % < 99 %" in text
    assert "- skipped `model-fp16.engine`: TensorRT is not installed" in text
    assert ("FP32/FP16 accuracy drop ≤ 0.5 pt and agreement ≥ 99 %; INT8 drop ≤ 1 pt and agreement ≥ 97 %; no inf/NaN"
            in text)
    passing = compare_logits(reference, reference, labels, CLASSES, name="model-fp32.onnx")
    text = markdown(_report([passing]))
    assert "(0 of 100 differ)" in text and "**Fails:**" not in text and "skipped" not in text


def test_the_disagreement_plot_counts_only_answers_not_inf_or_nan_rows(tmp_path, monkeypatch):
    """The confusion of disagreements counts pictures whose artifact top-1 is another class; an inf/NaN row has
    no top-1 and is not drawn as a vote for the last class."""
    import edgenode.plots as plots
    from edgenode.parity.report import plot_disagreements

    reference, candidate, labels = _logits()
    candidate[50] = np.nan  # a picture of class c without an answer
    result = compare_logits(reference, candidate, labels, CLASSES, name="broken.onnx",
                            thresholds=ParityThresholds(max_drop_pt=100, min_agreement_pct=0))
    figures = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or real_save(fig, path))
    plot_disagreements(_report([result]), tmp_path / "disagreements.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "broken.onnx\n3 disagreement(s)"
    matrix = ax.images[0].get_array()
    assert int(matrix.sum()) == 3 and int(matrix[0, 1]) == 3 and int(matrix[2, 3]) == 0


def test_an_artifact_with_inf_or_nan_logits_still_gets_every_report_file(tmp_path):
    """The |Δlogit| histogram is drawn from the finite errors only (an inf among them makes every bin edge
    non-finite: an empty plot), and a failing artifact with inf/NaN rows, the case a report matters most for,
    still gets parity.json, parity.md and every plot."""
    from edgenode.parity.report import write_report

    reference, candidate, labels = _logits()
    candidate[50] = np.nan
    candidate[60, 2] = np.inf
    result = compare_logits(reference, candidate, labels, CLASSES, name="broken.onnx")
    assert np.isfinite(result.abs_logit_error).all() and result.abs_logit_error.size == 100 * 4 - 4 - 1  # the NaN row, the one inf
    files = write_report(_report([result]), tmp_path / "report")
    assert sorted(p.name for p in files) == ["agreement.png", "disagreements.png", "logit_error_hist.png",
                                            "parity.json", "parity.md"]
    assert all(p.stat().st_size > 0 for p in files)


class _FakeReference:
    """A predictor-shaped stand-in: logits are a fixed function of the pixels, calls are counted."""

    def __init__(self):
        solver = SolverConfig("dopri5", rtol=1e-6, atol=1e-6)
        self.metadata = types.SimpleNamespace(sha256="a" * 64, solver=solver, mirror_average=False,
                                              path=Path("run/best.pt"), num_classes=2)
        self.runner = types.SimpleNamespace(describe=lambda: "torch cpu")
        self.last_inference_ms = 1.0
        self.calls = 0

    def predict_logits(self, x):
        self.calls += 1
        mean = x.reshape(len(x), -1).mean(axis=1)
        return np.stack([mean, -mean], axis=1).astype(np.float32)


def test_the_memoised_reference_is_per_split(tmp_path, monkeypatch):
    """Reference logits are memoised per process, keyed on what they depend on: the val and the test split of one
    manifest hold the same number of pictures, and the second split asked for gets its own logits, not the first's."""
    import edgenode.parity.run as run

    monkeypatch.setattr(run, "_REFERENCE_CACHE", {})
    reference = _FakeReference()
    rng = np.random.default_rng(0)
    x_val, x_test = rng.random((6, 3, 4, 4), dtype=np.float32), rng.random((6, 3, 4, 4), dtype=np.float32) + 1

    def config(split):
        return ParityConfig(artifacts=("exp/model.onnx",), reference="run/best.pt", data=str(tmp_path), split=split)

    val = run.reference_logits(reference, x_val, config("val"), "m" * 64)
    test = run.reference_logits(reference, x_test, config("test"), "m" * 64)
    np.testing.assert_array_equal(val, reference.predict_logits(x_val))
    np.testing.assert_array_equal(test, reference.predict_logits(x_test))
    reference.calls = 0
    again = run.reference_logits(reference, x_test, config("test"), "m" * 64)
    assert reference.calls == 0 and again is test  # the same request is served from memory


def test_a_batch_size_below_one_is_refused():
    """--batch-size 0 is a usage error when the config is built, not an empty loop later."""
    from edgenode.errors import UsageError

    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):
        ParityConfig(artifacts=("exp/model.onnx",), reference="run/best.pt", data="data", batch_size=0)
    assert ParityConfig(artifacts=("exp/model.onnx",), reference="run/best.pt", data="data", batch_size=1).batch_size == 1


EXPORT_FILES = {"fp32": "model-rk4x4-fp32.onnx", "fp16": "model-rk4x4-fp16.onnx"}


def test_a_reference_with_inf_or_nan_logits_is_an_error_not_a_comparison(shared_exports, trained_run, synthetic_root,
                                                                          monkeypatch):
    """Every comparison with an inf/NaN reference would be meaningless (a NaN row's argmax is class 0): the run
    stops with an error naming how many pictures gave it, before any artifact is judged."""
    import edgenode.parity.run as run
    from edgenode.errors import ArtifactError
    from edgenode.parity import run_parity

    real = run.reference_logits

    def broken(*args, **kwargs):
        logits = np.array(real(*args, **kwargs))
        logits[3, 0] = np.nan
        return logits

    monkeypatch.setattr(run, "reference_logits", broken)
    config = ParityConfig(artifacts=(str(shared_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                          data=str(synthetic_root), attribution=False)
    with pytest.raises(ArtifactError, match=r"the reference gives inf/NaN logits on 1 of 24 test images"):
        run_parity(config)


def test_saturated_logits_are_looked_for_in_reduced_precision_files_only(shared_exports, trained_run, synthetic_root,
                                                                         monkeypatch):
    """FP16/INT8 logits at their format's limit fail parity as saturated; FP32 files are checked for inf/NaN
    alone (they have no such limit at logit scale)."""
    import edgenode.export.numerics as numerics
    from edgenode.parity import run_parity

    seen = {}
    real = numerics.diagnose_logits

    def recording(model, logits, images, saturation=True):
        seen[Path(model).name] = saturation
        return real(model, logits, images, saturation=saturation)

    monkeypatch.setattr(numerics, "diagnose_logits", recording)
    artifacts = tuple(str(shared_exports[k]) for k in ("fp32", "fp16"))
    report = run_parity(ParityConfig(artifacts=artifacts, reference=str(trained_run.best_checkpoint),
                                     data=str(synthetic_root), attribution=False))
    assert len(report.results) == 2
    assert seen == {EXPORT_FILES["fp32"]: False, EXPORT_FILES["fp16"]: True}


def test_an_underflow_at_the_default_tolerance_stays_the_checkpoints_error():
    """A step-size underflow is blamed on --reference-tol only when the user asked for a tolerance tighter than the
    default; at the default (or a looser one) the model's dynamics are at fault and the artifact error stands.
    A NaN step is never the tolerance's fault."""
    from edgenode.errors import ArtifactError, UsageError
    from edgenode.export.steps import REFERENCE_TOL
    from edgenode.parity.run import refuse_unreachable_tolerance

    def underflow(step="0.0"):
        try:
            try:
                raise AssertionError(f"underflow in dt {step}")
            except AssertionError:
                raise ArtifactError("run/best.pt: failed on torch cpu (AssertionError: underflow in dt)")
        except ArtifactError as exc:
            return exc

    def reference(rtol):
        return types.SimpleNamespace(solver=SolverConfig("dopri5", rtol=rtol, atol=rtol), path=Path("run/best.pt"))

    config = ParityConfig(artifacts=("exp/model.onnx",), reference="run/best.pt", data="data")
    refuse_unreachable_tolerance(underflow(), config, reference(REFERENCE_TOL))  # the checkpoint's error: no UsageError
    refuse_unreachable_tolerance(underflow(), config, reference(1e-4))
    refuse_unreachable_tolerance(underflow("nan"), config, reference(1e-12))
    with pytest.raises(UsageError, match="--reference-tol 1e-12: dopri5 cannot reach it on best.pt"):
        refuse_unreachable_tolerance(underflow(), config, reference(1e-12))


def test_provider_cpu_keeps_the_reference_on_the_cpu(shared_exports, trained_run, synthetic_root, monkeypatch):
    """--provider cpu runs the reference checkpoint on the CPU too (not on a GPU torch may see); a GPU provider
    for the artifacts lets the reference take the GPU where there is one."""
    import edgenode.parity.run as run
    from edgenode.parity import run_parity

    providers = []
    real = run.load_predictor

    def recording(path, provider="auto", **kwargs):
        providers.append((Path(path).suffix, provider))
        return real(path, provider=provider, **kwargs)

    monkeypatch.setattr(run, "load_predictor", recording)
    run_parity(ParityConfig(artifacts=(str(shared_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                            data=str(synthetic_root), provider="cpu", attribution=False))
    assert providers == [(".pt", "cpu"), (".onnx", "cpu")]
    assert [run._torch_provider(p) for p in ("cpu", "auto", "cuda", "tensorrt")] == ["cpu", "auto", "auto", "auto"]
