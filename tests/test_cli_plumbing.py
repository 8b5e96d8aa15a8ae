"""Each command's options reach the configuration of the stage it runs: an option parsed and then dropped would
silently measure or build something other than what was asked."""

from __future__ import annotations


from typer.testing import CliRunner

from edgenode.cli import app


class _Stop(Exception):
    """Raised by a captured back-end: the CLI's option plumbing is what these tests look at."""


# --- CLI option plumbing ----------------------------------------------------------------------------------------------


def test_verify_cli_passes_its_provider_and_tolerances(shared_exports, monkeypatch):
    """`edgenode verify --provider cpu --atol 0.1 --rtol 0.2` reaches verify_folder."""
    import edgenode.runtime.verify as verify

    seen = []

    def capture(folder, provider="auto", tolerances=None):
        seen.append((provider, tolerances))
        raise _Stop

    monkeypatch.setattr(verify, "verify_folder", capture)
    CliRunner().invoke(app, ["verify", str(shared_exports["fp32"].parent), "--provider", "cpu", "--atol", "0.1", "--rtol", "0.2"])
    ((provider, tolerances),) = seen
    assert provider == "cpu"
    assert tolerances is not None and {p: (t.atol, t.rtol) for p, t in tolerances.items()} == {
        "fp32": (0.1, 0.2), "fp16": (0.1, 0.2), "int8": (0.1, 0.2)}


def test_parity_cli_passes_its_thresholds_split_and_provider(trained_run, synthetic_root, shared_exports, tmp_path, monkeypatch):
    """Every threshold to its own field, --split and --provider to the config."""
    import edgenode.parity as parity
    from edgenode.parity import ParityThresholds

    seen = []
    monkeypatch.setattr(parity, "run_parity", lambda config: seen.append(config) or (_ for _ in ()).throw(_Stop()))
    CliRunner().invoke(app, ["parity", str(shared_exports["fp32"]), "--reference", str(trained_run.best_checkpoint),
                             "--data", str(synthetic_root), "--out", str(tmp_path / "p"), "--split", "val", "--provider", "cpu",
                             "--max-drop", "0.25", "--min-agreement", "98", "--int8-max-drop", "2", "--int8-min-agreement", "95",
                             "--max-logit-error", "0.5"])
    (config,) = seen
    assert config.thresholds == ParityThresholds(max_drop_pt=0.25, min_agreement_pct=98.0, int8_max_drop_pt=2.0,
                                                 int8_min_agreement_pct=95.0, max_logit_error=0.5)
    assert config.split == "val" and config.provider == "cpu"


def test_bench_cli_passes_warmup_repeats_opset_and_compile(trained_run, tmp_path, monkeypatch):
    """--warmup, --repeats, --opset (the sweep's exports) and --no-compile reach BenchConfig."""
    import edgenode.bench as bench

    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda config: seen.append(config) or (_ for _ in ()).throw(_Stop()))
    CliRunner().invoke(app, ["bench", "--reference", str(trained_run.best_checkpoint), "--warmup", "2", "--repeats", "7",
                             "--opset", "17", "--no-compile", "--out", str(tmp_path / "b")])
    (config,) = seen
    assert (config.warmup, config.repeats, config.sweep_opset, config.gpu_compile) == (2, 7, 17, False)


def test_evaluate_cli_passes_its_split_and_exclude_list(trained_run, synthetic_root, tmp_path, monkeypatch):
    """`edgenode evaluate --split val --exclude FILE`."""
    import edgenode.accuracy_report as accuracy_report

    seen = []
    monkeypatch.setattr(accuracy_report, "accuracy_report", lambda *args, **kwargs: seen.append(kwargs) or {})
    listed = tmp_path / "exclude.txt"
    listed.write_text("Person A/one.png\n\nPerson B/two.png\n")
    result = CliRunner().invoke(app, ["evaluate", str(trained_run.best_checkpoint), str(synthetic_root), "--split", "val",
                                      "--exclude", str(listed), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (kwargs,) = seen
    assert kwargs["split"] == "val" and kwargs["exclude_files"] == {"Person A/one.png", "Person B/two.png"}


def test_align_cli_passes_its_padding(synthetic_root, tmp_path, monkeypatch):
    """`edgenode align --padding 0.4` cuts the chips with that padding."""
    import edgenode.align as align

    seen = []

    def capture(root, out, files, size, spec, **kwargs):
        seen.append(spec)
        return {"aligned_now": 0, "face_detected_now": 0, "already_there": 0, "skipped": [], "seconds": 0.0}

    monkeypatch.setattr(align, "align_dataset", capture)
    result = CliRunner().invoke(app, ["align", str(synthetic_root), "--out", str(tmp_path / "copy"), "--padding", "0.4",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert [spec.padding for spec in seen] == [0.4]


def test_teacher_cli_passes_its_cnn_fallback(synthetic_root, tmp_path, monkeypatch):
    """`edgenode teacher --cnn-fallback` describes the faces the CNN detector finds."""
    import edgenode.teacher as teacher

    seen = []
    monkeypatch.setattr(teacher, "installed_provenance", lambda *a, **k: {})
    monkeypatch.setattr(teacher, "model_files", lambda: (None, None))
    monkeypatch.setattr(teacher, "cnn_detector_file", lambda: None)
    monkeypatch.setattr(teacher, "compute_descriptors", lambda *a, **k: seen.append(k) or (_ for _ in ()).throw(_Stop()))
    CliRunner().invoke(app, ["teacher", str(synthetic_root), "--out", str(tmp_path / "t.npz"), "--cnn-fallback", "--workers", "1"])
    assert [k.get("cnn_fallback") for k in seen] == [True]
