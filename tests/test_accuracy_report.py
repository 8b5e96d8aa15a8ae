"""Accuracy report: figures for tiny inputs, worst-class choice, and report.json against a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgenode.accuracy_report import accuracy_report, prediction_grid, select_examples, worst_class_confusion
from edgenode.checkpoint import load_checkpoint
from edgenode.data import Manifest, load_split
from edgenode.errors import ArtifactError
from edgenode.metrics import wilson_interval
from helpers import one_line

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = [f"Person {i}" for i in range(6)]


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(6), 5)
    return rng.integers(0, 256, (len(true), 16, 16, 3), dtype=np.uint8), true


@pytest.mark.parametrize("case", ["some", "none", "all"])
def test_prediction_grid_writes_png_and_shows_errors(tiny, tmp_path, case):
    images, true = tiny
    pred = {"some": np.where(np.arange(len(true)) % 7 == 0, (true + 1) % 6, true), "none": true.copy(),
            "all": (true + 1) % 6}[case]
    probs = np.linspace(0.2, 0.99, len(true))
    shown = prediction_grid(images, true, pred, CLASSES, tmp_path / "grid.png", n=12, seed=3, probs=probs)
    assert _is_png(tmp_path / "grid.png")
    assert len(shown) == 12 and len(set(shown.tolist())) == 12
    n_wrong = int((true[shown] != pred[shown]).sum())
    assert n_wrong == {"some": int((true != pred).sum()), "none": 0, "all": 12}[case]  # every error fits in half
    assert np.array_equal(shown, select_examples(true, pred, 12, seed=3))  # seeded: same selection again


def test_select_examples_caps_errors_at_half_and_depends_on_seed():
    true = np.arange(100) % 10
    pred = np.where(np.arange(100) < 60, (true + 1) % 10, true)  # 60 wrong, 40 right
    picked = select_examples(true, pred, 24, seed=0)
    assert int((true[picked] != pred[picked]).sum()) == 12
    assert not np.array_equal(picked, select_examples(true, pred, 24, seed=1))


def test_worst_class_confusion_picks_lowest_recall(tmp_path):
    true = np.repeat(np.arange(6), 4)
    pred = true.copy()
    pred[true == 3] = [0, 0, 5, 0]          # recall 0.00: mistaken for 0 three times, 5 once
    pred[np.flatnonzero(true == 1)[:2]] = 2  # recall 0.50: mistaken for 2
    pred[np.flatnonzero(true == 4)[0]] = 0   # recall 0.75
    worst = worst_class_confusion(true, pred, CLASSES, tmp_path / "worst.png", k=3)
    assert _is_png(tmp_path / "worst.png")
    assert worst.rows == [3, 1, 4]
    assert worst.recall == [0.0, 0.5, 0.75]
    assert worst.columns == [0, 2, 5]  # ordered by errors received: 0 gets 4, 2 gets 2, 5 gets 1
    none = worst_class_confusion(true, true, CLASSES, tmp_path / "none.png", k=2)
    assert _is_png(tmp_path / "none.png") and none.columns == [] and none.recall == [1.0, 1.0]


def test_worst_class_confusion_ignores_absent_classes(tmp_path):
    true = np.array([0, 0, 1, 1, 2, 2])  # classes 3..5 absent: no recall, never "worst"
    pred = np.array([0, 1, 1, 1, 2, 2])
    assert worst_class_confusion(true, pred, CLASSES, tmp_path / "w.png", k=4).rows == [0, 1, 2]


@pytest.fixture(scope="module")
def hand_predictions(trained_run, synthetic_manifest, synthetic_root):
    """The test split's argmax computed independently of the module: load_split + the checkpoint's model."""
    model = load_checkpoint(trained_run.best_checkpoint).build_model()
    x, y = load_split(synthetic_manifest, synthetic_root, "test")
    with torch.no_grad():
        prob = torch.softmax(model(x), dim=1)
    return prob.argmax(1).numpy(), y.numpy(), prob.max(1).values.numpy()


def test_an_exclusion_of_every_image_reports_no_accuracy_not_zero(trained_run, synthetic_root, synthetic_manifest,
                                                                  tmp_path, capsys, one_thread):
    """Excluding the whole split leaves nothing to score: no figure, where 0.0 with (0, 1) read as every answer wrong."""
    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json",
                             tmp_path / "report", exclude_files=synthetic_manifest.files("test"))
    assert report["excluding_files"] == {"accuracy": None, "accuracy_ci": None, "n": 0, "n_excluded": 24,
                                         "n_listed_not_in_split": 0, "excluded": "--exclude's files"}
    assert "without 24 file(s) (--exclude's files): no image left to score (n=0)" in "".join(capsys.readouterr())


def test_accuracy_report_matches_hand_argmax(trained_run, synthetic_root, synthetic_manifest, hand_predictions, tmp_path,
                                             one_thread):
    pred, y, top_probability = hand_predictions
    files = synthetic_manifest.files("test")
    correct = pred == y
    assert not correct.all(), "the tiny model errs on some test images, so the misclassified list is compared"
    # exclude every wrong image and the first two right ones, so the subset accuracy differs from the full one
    right = [files[i] for i in np.flatnonzero(correct)[:2]]
    excluded = set(right) | {files[i] for i in np.flatnonzero(~correct)} | {"not/in/the/split.png"}
    keep = np.array([f not in excluded for f in files])
    out = tmp_path / "report"
    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json", out,
                             exclude_files=excluded, batch_size=7)
    assert report["n"] == len(y) == 24
    assert report["accuracy"] == pytest.approx(correct.mean())
    assert tuple(report["accuracy_ci"]) == pytest.approx(wilson_interval(int(correct.sum()), len(y)))
    sub = report["excluding_files"]
    assert sub["n"] == int(keep.sum()) and sub["n_excluded"] == len(y) - int(keep.sum())
    assert sub["accuracy"] == pytest.approx(correct[keep].mean()) == 1.0 != report["accuracy"]
    assert sub["n_listed_not_in_split"] == 1
    assert tuple(sub["accuracy_ci"]) == pytest.approx(wilson_interval(int(correct[keep].sum()), int(keep.sum())))
    names = synthetic_manifest.classes
    assert [(m["file"], m["true"], m["predicted"]) for m in report["misclassified"]] == [
        (files[i], names[y[i]], names[pred[i]]) for i in np.flatnonzero(~correct)]
    # the argmax's softmax; dopri5 adapts its steps to the batch (7 here, 24 by hand): close, not bit-equal
    np.testing.assert_allclose([m["probability"] for m in report["misclassified"]], top_probability[~correct], atol=5e-4)
    for c, name in enumerate(synthetic_manifest.classes):
        assert report["per_class_recall"][name] == pytest.approx(correct[y == c].mean())
    worst = [r["recall"] for r in report["worst_classes"]]
    assert worst == sorted(worst) and worst[0] == pytest.approx(min(report["per_class_recall"].values()))
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("predictions.png", "worst_classes.png", "per_class_recall.png"):
        assert _is_png(out / name), name


def test_accuracy_report_mirror_average_is_the_mean_of_both_views(trained_run, synthetic_root, synthetic_manifest, tmp_path,
                                                                  one_thread):
    model = load_checkpoint(trained_run.best_checkpoint).build_model()
    x, y = load_split(synthetic_manifest, synthetic_root, "test")
    with torch.no_grad():  # odenet's linear head: the mirrored model's logits are the two views' mean
        prob = torch.softmax((model(x) + model(torch.flip(x, dims=[3]))) / 2, dim=1).numpy()
    pred = prob.argmax(1)
    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json",
                             tmp_path / "report", mirror_average=True)
    assert report["mirror_average"] is True and report["accuracy"] == pytest.approx((pred == y.numpy()).mean())
    names = synthetic_manifest.classes
    wrong = pred != y.numpy()
    assert wrong.any(), "the tiny model errs on some test images, so the probabilities below are compared"
    assert [m["predicted"] for m in report["misclassified"]] == [names[p] for p in pred[wrong]]
    np.testing.assert_allclose([m["probability"] for m in report["misclassified"]], prob.max(1)[wrong], atol=1e-5)


def test_accuracy_report_refuses_other_manifest(trained_run, synthetic_root, synthetic_manifest, tmp_path):
    other = type(synthetic_manifest)(**{**vars(synthetic_manifest), "splits": {
        **synthetic_manifest.splits, "test": synthetic_manifest.splits["test"][:-1]}})
    other.save(tmp_path / "manifest.json")
    with pytest.raises(ArtifactError) as info:
        accuracy_report(trained_run.best_checkpoint, synthetic_root, tmp_path / "manifest.json", tmp_path / "out")
    message = str(info.value)
    assert other.sha256[:12] in message and synthetic_manifest.sha256[:12] in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def _onnx_argmax(path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    return prob.argmax(1), prob.max(1)


def test_evaluate_scores_an_export_as_deployed(trained_run, shared_exports, synthetic_root, synthetic_manifest, tmp_path):
    """`edgenode evaluate` of the INT8 file is that file's own argmax (ONNX Runtime by hand), and the near-duplicate
    option scores the split without the test picture paired with a train picture of its identity."""
    from typer.testing import CliRunner

    from edgenode.cli.app import app
    from edgenode.data.near_duplicates import NearDuplicate, write_near_duplicates

    x, y = load_split(synthetic_manifest, synthetic_root, "test")
    pred, top_probability = _onnx_argmax(shared_exports["int8"], x.numpy())
    files = synthetic_manifest.files("test")
    leaked = next(i for i, f in enumerate(files) if pred[i] != y[i])  # an error, so the subset's accuracy differs
    same_person = next(f for f, c in zip(synthetic_manifest.files("train"), synthetic_manifest.labels("train"))
                       if c == y[leaked])
    write_near_duplicates(tmp_path / "pairs.tsv", [NearDuplicate(same_person, files[leaked], 1)])
    out = tmp_path / "int8-report"
    result = CliRunner().invoke(app, ["evaluate", str(shared_exports["int8"]), str(synthetic_root), "--manifest",
                                      str(trained_run.run_dir / "manifest.json"), "--near-duplicates",
                                      str(tmp_path / "pairs.tsv"), "--out", str(out), "--json", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["artifact"]["precision"] == "int8" and report["artifact"]["int8_target"] == "ort"
    assert report["runtime"].startswith("onnxruntime") and report["checkpoint"] is None
    assert report["checkpoint_sha256"] == load_checkpoint(trained_run.best_checkpoint).sha256
    correct = pred == y.numpy()
    assert report["accuracy"] == pytest.approx(correct.mean()) and report["n"] == len(y)
    names = synthetic_manifest.classes
    assert [m["predicted"] for m in report["misclassified"]] == [names[p] for p in pred[~correct]]
    np.testing.assert_allclose([m["probability"] for m in report["misclassified"]], top_probability[~correct], atol=1e-5)
    keep = np.arange(len(files)) != leaked
    assert report["excluding_files"]["n_excluded"] == 1
    assert report["excluding_files"]["accuracy"] == pytest.approx(correct[keep].mean()) != report["accuracy"]
    assert "accuracy" in result.stderr and "model-rk4x4-int8-ort.onnx" in result.stderr


def test_evaluate_default_folder_and_an_export_without_its_manifest(trained_run, shared_exports, synthetic_root, tmp_path):
    import shutil

    from edgenode.cli.evaluate import default_out
    from edgenode.errors import ArtifactPathError, UsageError

    assert default_out(trained_run.best_checkpoint) == trained_run.run_dir / "accuracy-report"
    assert default_out(shared_exports["fp32"]) == shared_exports["fp32"].parent / "accuracy-report-model-rk4x4-fp32"
    # export copies the split beside its files, so a copied export folder is scored without --manifest
    copied = shared_exports["fp32"].parent / "manifest.json"
    assert copied.read_bytes() == (trained_run.run_dir / "manifest.json").read_bytes()
    report = accuracy_report(shared_exports["fp32"], synthetic_root, None, tmp_path / "report")
    assert report["n"] == len(Manifest.load(copied).files("test"))
    alone = tmp_path / "alone"
    alone.mkdir()
    for suffix in ("", ".json"):
        shutil.copy(str(shared_exports["fp32"]) + suffix, alone)
    with pytest.raises(ArtifactPathError) as exc:  # a file copied without it
        accuracy_report(alone / shared_exports["fp32"].name, synthetic_root, None, alone / "never")
    one_line(exc, "manifest.json: split manifest not found", "--manifest", "model-rk4x4-fp32.onnx")
    with pytest.raises(UsageError) as exc:  # one view is baked into this file
        accuracy_report(shared_exports["fp32"], synthetic_root, trained_run.run_dir / "manifest.json",
                        shared_exports["fp32"].parent / "never", mirror_average=True)
    one_line(exc, "classifies each picture alone", "re-export the checkpoint with --mirror-average")
    assert not (shared_exports["fp32"].parent / "never").exists()


def test_near_duplicates_are_excluded_from_the_split_scored(trained_run, synthetic_root, synthetic_manifest, tmp_path, one_thread):
    from edgenode.data.near_duplicates import NearDuplicate, write_near_duplicates

    val, label = synthetic_manifest.files("val")[0], synthetic_manifest.labels("val")[0]
    same = next(f for f, c in zip(synthetic_manifest.files("train"), synthetic_manifest.labels("train")) if c == label)
    write_near_duplicates(tmp_path / "pairs.tsv", [NearDuplicate(same, val, 1)])
    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json",
                             tmp_path / "r", split="val", near_duplicates=tmp_path / "pairs.tsv")
    assert report["excluding_files"]["n_excluded"] == 1 and report["excluding_files"]["n"] == len(synthetic_manifest.files("val")) - 1
    assert report["excluding_files"]["excluded"] == "near-duplicates of a train picture of the same identity, pairs.tsv"


def test_a_worst_class_is_confused_with_another_class_never_itself(trained_run, synthetic_root, synthetic_manifest, tmp_path,
                                                                   one_thread):
    """"most_confused_with" is the class that takes most of its errors (None without errors)."""
    from edgenode.accuracy_report import accuracy_report

    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json", tmp_path / "r")
    classes = synthetic_manifest.classes
    assert any(row["recall"] > 0.5 for row in report["worst_classes"])
    for row in report["worst_classes"]:
        counts = np.zeros(len(classes), dtype=int)
        for m in report["misclassified"]:
            if m["true"] == row["class"]:
                counts[classes.index(m["predicted"])] += 1
        assert row["most_confused_with"] == (classes[int(counts.argmax())] if counts.any() else None), row


def test_near_duplicates_of_another_identity_are_not_excluded(trained_run, synthetic_root, synthetic_manifest, tmp_path, one_thread):
    """The score without near-duplicates drops pairs within one identity only (as its "excluded" line says)."""
    from edgenode.accuracy_report import accuracy_report
    from edgenode.data.near_duplicates import NearDuplicate, write_near_duplicates

    val, label = synthetic_manifest.files("val")[0], synthetic_manifest.labels("val")[0]
    other = next(f for f, c in zip(synthetic_manifest.files("train"), synthetic_manifest.labels("train")) if c != label)
    write_near_duplicates(tmp_path / "pairs.tsv", [NearDuplicate(other, val, 1)])
    report = accuracy_report(trained_run.best_checkpoint, synthetic_root, trained_run.run_dir / "manifest.json",
                             tmp_path / "r", split="val", near_duplicates=tmp_path / "pairs.tsv")
    assert report["excluding_files"]["n_excluded"] == 0
