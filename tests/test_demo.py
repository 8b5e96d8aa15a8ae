"""`edgenode demo`, the README's first command, runs the whole path end to end (tiny settings)."""

import functools
import json
import stat
import types

import pytest
from typer.testing import CliRunner

from edgenode.cli import app
from edgenode.data import SplitConfig
from edgenode.demo import DATA_RECORD, MIN_PER_CLASS, DemoConfig, demo_split, prepare_data, resumes_training
from edgenode.errors import UsageError


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--classes", "4", "--per-class", "16", "--epochs", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "parity" / "parity.json").read_text())["passed"] is True  # exit 0 means parity held
    assert (out / "train" / "best.pt").is_file() and (out / "train" / "curves.png").is_file()
    assert sorted(p.name for p in (out / "export").glob("*.onnx"))[0].startswith("model-rk4x")
    assert len(list((out / "export").glob("*.onnx"))) == 4  # fp32, fp16, int8 for ORT and for TensorRT
    assert (out / "parity" / "parity.md").is_file()
    assert "Passed:" in result.output and "done." in result.output

    again = CliRunner().invoke(app, args)  # a second run resumes instead of starting over
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and "reusing the synthetic data set" in again.output


def test_a_demo_whose_artifacts_fail_parity_exits_1_after_every_stage(tmp_path, monkeypatch):
    """Parity held to a bound no artifact meets (|Δlogit| = 0): the demo still runs infer and writes everything,
    then ends on one `error:` line naming the failed files, with exit 1, as `edgenode parity` does. At the smallest
    --per-class the demo accepts (4 train images per identity: export's INT8 calibration takes 4), and a rerun with
    another --epochs is refused in the demo's words, not in those of `train --resume`."""
    import edgenode.demo as demo
    from edgenode.parity import ParityThresholds

    monkeypatch.setattr(demo, "ParityConfig", functools.partial(demo.ParityConfig, thresholds=ParityThresholds(max_logit_error=0.0)))
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--classes", "3", "--per-class", str(demo.MIN_PER_CLASS), "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1"])
    assert result.exit_code == 1, result.output
    assert len(list((out / "export").glob("*int8*.onnx"))) == 2
    assert json.loads((out / "parity" / "parity.json").read_text())["passed"] is False
    assert "5/5" in result.output and "done, but parity FAILED" in result.output and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fail parity" in errors[0] and "model-rk4x" in errors[0] and "parity.md" in errors[0]

    longer = CliRunner().invoke(app, [*args, "--epochs", "2"])
    assert longer.exit_code == 2 and "--resume" not in longer.output
    assert f"error: --out {out}: holds a demo trained with other settings (--epochs 1 → 2) (pass another --out, or " \
           f"delete {out / 'train'} to train again)" in " ".join(longer.output.split())


def test_demo_data_is_drawn_once_per_settings_and_redrawn_when_they_change(tmp_path):
    """A rerun with the same settings reuses the drawn data; other settings, or a folder without the record
    (an older or interrupted draw), are drawn anew instead of trained on."""
    from edgenode.data import discover_images
    from edgenode.demo import DATA_RECORD, DemoConfig, prepare_data

    out = tmp_path / "demo"
    data = prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5))
    first = data / "images" / "Synthetic Person 00" / "Synthetic Person 00_000.png"
    stamp = first.stat().st_mtime_ns
    assert prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5)) == data
    assert first.stat().st_mtime_ns == stamp  # reused, not redrawn

    prepare_data(DemoConfig(out=str(out), n_classes=3, per_class=6))
    assert {k: len(v) for k, v in discover_images(data).items()} == {f"Synthetic Person 0{c}": 6 for c in range(3)}
    assert json.loads((data / DATA_RECORD).read_text())["per_class"] == 6

    (data / DATA_RECORD).unlink()  # what a draw of an older version, or one killed half-way, left behind
    prepare_data(DemoConfig(out=str(out), n_classes=3, per_class=6))
    assert (data / DATA_RECORD).is_file() and sorted(p.name for p in out.iterdir()) == ["data"]


def test_demo_refuses_to_redraw_under_a_run_trained_on_other_data(tmp_path):
    """Redrawing would resume the trained run on another data set: one line naming both settings instead."""
    import pytest

    from edgenode.demo import DemoConfig, prepare_data
    from edgenode.errors import UsageError

    out = tmp_path / "demo"
    data = prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5))
    (out / "train").mkdir()
    (out / "train" / "last.pt").write_bytes(b"stands for a checkpoint")
    with pytest.raises(UsageError, match=r"holds a demo trained on synthetic data drawn with --classes 2 --per-class 5 "
                                         r"and seed 0, not --classes 3 --per-class 5 and seed 0") as caught:
        prepare_data(DemoConfig(out=str(out), n_classes=3, per_class=5))
    assert caught.value.exit_code == 2 and f"delete {out} to start over" in str(caught.value)
    assert len(list((data / "images").iterdir())) == 2


def test_a_failed_swap_of_the_drawn_data_keeps_the_old_data_set(tmp_path, monkeypatch):
    """Replacing the data set takes two renames; when the second fails, the old data set goes back in place
    rather than being deleted with the new draw."""
    import os

    import pytest

    import edgenode.demo as demo

    out = tmp_path / "demo"
    data = demo.prepare_data(demo.DemoConfig(out=str(out), n_classes=2, per_class=5))
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    real_rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(demo.os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        demo.prepare_data(demo.DemoConfig(out=str(out), n_classes=3, per_class=5))
    monkeypatch.undo()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # no hidden draw left behind


def test_demo_split_is_a_quarter_test_a_fifth_val_and_at_least_two_of_each():
    """80 images per identity: 20 test (a quarter), 16 val (a fifth), 44 train; at the smallest --per-class the
    demo takes, 2 test, 2 val and 4 train."""
    assert demo_split(DemoConfig()) == SplitConfig(per_class=80, train=44, val=16, test=20, seed=0)
    assert demo_split(DemoConfig(per_class=MIN_PER_CLASS, seed=3)) == SplitConfig(per_class=8, train=4, val=2, test=2, seed=3)


def test_another_seed_draws_the_data_set_again(tmp_path):
    """The seed is one of the settings a drawn data set is reused for: another seed draws other pictures."""
    out = tmp_path / "demo"
    data = prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5, seed=0))
    first = data / "images" / "Synthetic Person 00" / "Synthetic Person 00_000.png"
    before = first.read_bytes()
    prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5, seed=1))
    assert json.loads((data / DATA_RECORD).read_text())["seed"] == 1
    assert first.read_bytes() != before


def test_the_drawn_data_set_is_readable_by_others(tmp_path):
    """The data folder is drawn in an owner-only temporary folder, then opened up (0755) like any data set."""
    data = prepare_data(DemoConfig(out=str(tmp_path / "demo"), n_classes=2, per_class=5))
    assert stat.S_IMODE(data.stat().st_mode) == 0o755


def test_a_run_trained_at_another_width_is_not_resumed(tmp_path, monkeypatch):
    """The width is checked as the epochs are: resuming under another width is refused in the demo's words."""
    import edgenode.checkpoint

    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    (out / "train" / "last.pt").write_bytes(b"stands for a checkpoint")
    saved = types.SimpleNamespace(train_config={"epochs": 12, "width": 16})
    monkeypatch.setattr(edgenode.checkpoint, "load_checkpoint", lambda path: saved)
    assert resumes_training(DemoConfig(out=str(out), epochs=12, width=16)) is True
    with pytest.raises(UsageError, match=r"other settings \(width \(DemoConfig\) 16 → 24\)") as info:
        resumes_training(DemoConfig(out=str(out), epochs=12, width=24))
    assert info.value.exit_code == 2
