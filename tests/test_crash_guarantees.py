"""Crashes, Ctrl-C and concurrent runs, each made to happen at a chosen point (docs/GUARANTEES.md: "Crashes lose
nothing", "Concurrency", and the kill between the last checkpoint and the metrics).

test_reliability.py kills ``train`` and ``export`` at random times; a write of a tiny file takes microseconds, so
those kills almost never land inside one, and a write that was not atomic would still pass. Here a real
``edgenode`` process (``PAUSING``: the script, with one write patched) stops half-way through the write a test is
about, with half the bytes on disk, and says so in a file; the test then kills it, interrupts it, reads beside it
or starts a second run into its folder, and lets it go on when it must.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgenode.checkpoint import load_checkpoint, save_checkpoint
from edgenode.cli import app
from edgenode.errors import ArtifactError
from edgenode.run_lock import LOCK_NAME
from helpers import whole_files

EPOCHS = 3
ONNX_NAME = "model-eulerx2-fp32.onnx"  # what `export` names the FP32 file of a euler x 2 checkpoint
INTERRUPTED = "error: interrupted (what was written stays whole; the same command with --resume continues the run)"

# `python PAUSING TARGET N SIGNALS [rename] -- edgenode arguments`: the edgenode script, except that the N-th write of
# the file named TARGET (under its final name or its hidden temporary, whichever the code writes) puts half its bytes
# on disk, creates SIGNALS/writing and waits for SIGNALS/go-writing before it writes them all; with "rename", the
# rename onto TARGET waits the same way (SIGNALS/renaming, SIGNALS/go-renaming). A kill or Ctrl-C lands in the wait.
PAUSING = textwrap.dedent(r"""
    import io, os, pathlib, re, sys, time

    target, nth, signals, *rest = sys.argv[1:]
    pause_rename = rest[0] == "rename"
    sys.argv = ["edgenode", *rest[rest.index("--") + 1:]]
    signals, count = pathlib.Path(signals), [0]

    def final_name(path):
        name = pathlib.Path(path).name
        while (m := re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)):  # atomic_path's .<name>.<random>.tmp, nested too
            name = m.group(1)
        return name

    def wait(step):
        (signals / step).touch()
        while not (signals / f"go-{step}").exists():
            time.sleep(0.01)

    def write(path, data, real):
        if final_name(path) == target:
            count[0] += 1
            if count[0] == int(nth):
                with open(path, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                wait("writing")
        return real(data)

    real_write_bytes = pathlib.Path.write_bytes
    pathlib.Path.write_bytes = lambda self, data: write(self, data, lambda d: real_write_bytes(self, d))
    if target.endswith(".pt"):
        import torch
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            write(f, buffer.getvalue(), lambda d: real_write_bytes(pathlib.Path(f), d))

        torch.save = save
    if target.endswith(".png"):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.figure
        real_savefig = matplotlib.figure.Figure.savefig

        def savefig(self, fname, *args, **kwargs):
            if not isinstance(fname, (str, os.PathLike)):
                return real_savefig(self, fname, *args, **kwargs)
            buffer = io.BytesIO()
            real_savefig(self, buffer, *args, **kwargs)
            write(fname, buffer.getvalue(), lambda d: real_write_bytes(pathlib.Path(fname), d))

        matplotlib.figure.Figure.savefig = savefig
    if pause_rename:
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if pathlib.Path(dst).name == target:
                wait("renaming")
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace

    from edgenode.__main__ import main
    main()
""")


# --- helpers ------------------------------------------------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    """The test's environment (EDGENODE_CACHE included), one thread: runs are bit-for-bit repeatable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}


def start_pausing(tmp_path: Path, target: str, nth: int, *args, rename: bool = False) -> tuple[subprocess.Popen, Path]:
    """An edgenode process that will pause inside the ``nth`` write of ``target`` (see PAUSING); its signals folder."""
    script, signals = tmp_path / "pausing.py", tmp_path / f"signals-{target}-{nth}"
    script.write_text(PAUSING)
    signals.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), target, str(nth), str(signals), "rename" if rename else "-", "--",
                             *map(str, args)], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    return proc, signals


def wait_for(marker: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``proc`` says it reached ``marker`` (a file), failing if it ends or takes too long."""
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {marker.name}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {marker.name} after {seconds} s")
        time.sleep(0.01)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """``proc``, killed (with anything it started) if the test fails before it ends."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def train_args(data: Path, manifest: Path, out: Path, *extra) -> list[str]:
    return ["train", str(data), "--out", str(out), "--manifest", str(manifest), "--arch", "paper", "--width", "8",
            "--solver", "euler", "--steps", "2", "--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "3e-3",
            "--no-progress", *extra]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def csv_epochs(run: Path) -> list[int]:
    return [int(row["epoch"]) for row in csv.DictReader((run / "metrics.csv").open())]


def untimed(history: list[dict]) -> list[dict]:
    """A history without its wall-clock column, the one figure two identical runs do not share."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_run(run: Path, straight: Path) -> None:
    """The run finished exactly as the uninterrupted one: weights bit for bit, history, best epoch, test figures,
    and nothing hidden left behind (no temporary, no lock)."""
    expected, actual = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert actual.epoch == expected.epoch == EPOCHS
    for name, tensor in expected.state_dict.items():
        torch.testing.assert_close(actual.state_dict[name], tensor, rtol=0, atol=0, msg=name)
    assert untimed(actual.history) == untimed(expected.history)
    assert load_checkpoint(run / "best.pt").epoch == load_checkpoint(straight / "best.pt").epoch
    assert untimed(json.loads((run / "metrics.json").read_text())) == untimed(json.loads((straight / "metrics.json").read_text()))
    assert csv_epochs(run) == list(range(1, EPOCHS + 1))
    results = [json.loads((folder / "results.json").read_text()) for folder in (run, straight)]
    assert [{k: v for k, v in r["test"].items() if k != "checkpoint"} for r in results] == [
        {k: v for k, v in results[1]["test"].items() if k != "checkpoint"}] * 2
    assert results[0]["best_epoch"] == results[1]["best_epoch"]
    assert whole_files(run) == []


# --- one uninterrupted run to compare with ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def split(synthetic_root, synthetic_manifest, tmp_path_factory) -> Path:
    return synthetic_manifest.save(tmp_path_factory.mktemp("split") / "manifest.json")


@pytest.fixture(scope="module")
def straight(synthetic_root, split, tmp_path_factory) -> Path:
    """The run, uninterrupted, in this process (one torch thread, as the killed processes have)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke(*train_args(synthetic_root, split, out))
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def resume_here(synthetic_root, split, one_thread):
    """Run the same command again in this process (with --resume unless told otherwise); it must succeed."""
    def run(out: Path, *extra) -> None:
        result = invoke(*train_args(synthetic_root, split, out, *extra))
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return run


# --- SIGKILL inside a write, then resume ------------------------------------------------------------------------

# (file, which of its writes, what the folder holds under that name after the kill: the version before, whole)
KILLED_WRITES = {
    "first last.pt": ("last.pt", 1, None),  # between the run's first two checkpoints: best.pt is there, last.pt is not
    "last.pt mid-run": ("last.pt", 2, 1),  # last.pt of epoch 2: the one of epoch 1 stays
    "metrics of the final epoch": ("metrics.csv", EPOCHS, EPOCHS - 1),  # after the final last.pt: metrics 1 epoch behind
    "results.json": ("results.json", 1, None),  # the test figures, written last: none yet
    "curves.png": ("curves.png", 1, None),  # after the final epoch, before the test pass
}


@pytest.mark.parametrize("case", KILLED_WRITES)
def test_sigkill_inside_a_write_keeps_the_old_file_whole_and_resume_finishes_the_same_run(
        case, synthetic_root, split, straight, resume_here, tmp_path):
    """A kill at a random time seldom lands inside a write: this one does, with half the new bytes on disk. Under the file's final name the folder holds the whole
    file of before (or none), the half-written one only as a hidden temporary, and the lock the kill released;
    the same command again (--resume; the first checkpoint's case without it, as a rerun) deletes the temporary,
    takes the lock and ends bit for bit where the uninterrupted run did."""
    name, nth, kept = KILLED_WRITES[case]
    run = tmp_path / "run"
    proc, signals = start_pausing(tmp_path, name, nth, *train_args(synthetic_root, split, run))
    with reaped(proc):
        wait_for(signals / "writing", proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    hidden = whole_files(run)
    temporaries = [h for h in hidden if h.startswith(f".{name}.") and h.endswith(".tmp")]
    assert len(temporaries) == 1 and sorted(hidden) == sorted([*temporaries, LOCK_NAME]), hidden
    assert (run / LOCK_NAME).read_text() == str(proc.pid)  # the dead holder's file: the next run takes it
    if name == "last.pt" and kept:
        assert load_checkpoint(run / name).epoch == kept
    elif name == "last.pt":
        assert not (run / name).exists() and load_checkpoint(run / "best.pt").epoch == 1  # written just before it
    elif name == "metrics.csv":
        assert load_checkpoint(run / "last.pt").epoch == EPOCHS and csv_epochs(run) == list(range(1, kept + 1))
    else:
        assert not (run / name).exists() and load_checkpoint(run / "last.pt").epoch == EPOCHS

    resume_here(run, *([] if case == "first last.pt" else ["--resume"]))
    assert_same_run(run, straight)


# --- Ctrl-C ----------------------------------------------------------------------------------------------------


def test_ctrl_c_during_train_is_one_line_exit_130_leaves_nothing_half_written_and_resume_continues(
        synthetic_root, split, straight, resume_here, tmp_path):
    """A terminal's Ctrl-C reaches `edgenode train` half-way through writing last.pt of epoch 2. It ends in the
    one line that says how to continue, exit 130; the interrupted write leaves no temporary, the lock is gone with
    the run, epoch 1 is whole; and the same command with --resume continues to the uninterrupted run's weights."""
    run = tmp_path / "run"
    proc, signals = start_pausing(tmp_path, "last.pt", 2, *train_args(synthetic_root, split, run))
    with reaped(proc):
        wait_for(signals / "writing", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and [line for line in stderr.splitlines() if line.startswith("error:")] == [INTERRUPTED]
    assert stderr.strip().splitlines()[-1] == INTERRUPTED, stderr
    assert whole_files(run) == []  # no temporary, no lock
    assert load_checkpoint(run / "last.pt").epoch == 1 and csv_epochs(run) == [1]

    resume_here(run, "--resume")
    assert_same_run(run, straight)


# --- one train per --out ----------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_second_train_into_a_running_runs_folder_is_refused_at_once_and_changes_nothing(
        synthetic_root, split, straight, tmp_path):
    """Two real runs: the first stopped half-way through a checkpoint (its lock held), a second `edgenode train` into
    the same --out, fresh or --resume (which would otherwise continue from the first one's last.pt), is refused in
    the one line naming the first one's process, exit 2, without waiting for it and without touching a file;
    the first then finishes as if alone."""
    run = tmp_path / "run"
    proc, signals = start_pausing(tmp_path, "last.pt", 2, *train_args(synthetic_root, split, run))
    with reaped(proc):
        wait_for(signals / "writing", proc)
        before = snapshot(run)
        line = (f"error: --out {run} is in use by another edgenode train (process {proc.pid}) "
                "(wait for it to finish, or train into another --out)")
        fresh = subprocess.run([sys.executable, "-m", "edgenode", *train_args(synthetic_root, split, run)], check=False,
                               env=subprocess_env(), capture_output=True, text=True, timeout=60)  # must not wait for the first
        assert (fresh.returncode, fresh.stderr.strip()) == (2, line), fresh.stderr
        resumed = invoke(*train_args(synthetic_root, split, run, "--resume"))
        assert (resumed.exit_code, resumed.stderr.strip()) == (2, line), resumed.output
        assert snapshot(run) == before and before[LOCK_NAME] == str(proc.pid).encode()
        (signals / "go-writing").touch()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_same_run(run, straight)


# --- each write: synced, renamed, its folder synced ---------------------------------------------------------------


def test_every_writer_syncs_the_whole_file_then_renames_it_then_syncs_the_folder(straight, tmp_path, monkeypatch):
    """A power loss keeps the old file or the new one only in this order, for each kind of file a run or an export
    writes (a folder synced before the rename does not hold the rename; a file synced before its bytes are written
    does not hold them): fsync of the temporary holding every byte, rename onto the final name, fsync of the
    folder; and nothing else ever names the final file."""
    import onnx

    from edgenode.artifacts import write_json, write_sidecar
    from edgenode.data import Manifest
    from edgenode.export.onnx_export import save_onnx
    from edgenode.plots import plot_training_curves
    from edgenode.run_history import write_history

    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", Path(src), Path(dst)))
        real_replace(src, dst, *args, **kwargs)

    ckpt = load_checkpoint(straight / "last.pt")
    history = json.loads((straight / "metrics.json").read_text())
    proto = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    out = tmp_path / "out"
    writers = {
        ("last.pt",): lambda: save_checkpoint(out / "last.pt", ckpt),
        ("metrics.csv", "metrics.json"): lambda: write_history(out, history),
        ("results.json",): lambda: write_json(out / "results.json", {"test": 1}),
        ("manifest.json",): lambda: Manifest.load(straight / "manifest.json").save(out / "manifest.json"),
        ("curves.png",): lambda: plot_training_curves(history, out / "curves.png"),
        ("m.onnx", "m.onnx.json"): lambda: (save_onnx(proto, out / "m.onnx"), write_sidecar(out / "m.onnx", {"k": 1})),
    }
    out.mkdir()
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for names, write in writers.items():
        events.clear()
        write()
        assert len(events) == 3 * len(names), events
        for name, (synced, renamed, folder) in zip(names, (events[i : i + 3] for i in range(0, len(events), 3))):
            final = out / name
            assert synced[0] == "fsync" and synced[1].parent == out and synced[1].name.startswith(f".{name}."), events
            assert synced[2] == final.stat().st_size > 0, f"{name}: synced before all of its bytes were written"
            assert renamed == ("rename", synced[1], final), events
            assert folder == ("fsync", out, folder[2]), f"{name}: the folder is not synced after the rename: {events}"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --- export: killed, or read, half-way through a write ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(straight, tmp_path_factory) -> tuple[Path, Path]:
    """The straight run's best.pt, and another checkpoint of its split (weights x 1.5) in a folder of its own."""
    other = tmp_path_factory.mktemp("other")
    (other / "manifest.json").write_bytes((straight / "manifest.json").read_bytes())
    ckpt = load_checkpoint(straight / "best.pt")
    ckpt.state_dict = {k: v * 1.5 if v.is_floating_point() and v.ndim > 1 else v for k, v in ckpt.state_dict.items()}
    save_checkpoint(other / "best.pt", ckpt)
    return straight / "best.pt", other / "best.pt"


def export_here(checkpoint: Path, out: Path) -> Path:
    from edgenode.export import ExportConfig, export_model

    export_model(ExportConfig(checkpoint=str(checkpoint), out=str(out), precisions="fp32", check_ode=False, opset=17))
    return out / ONNX_NAME


def export_args(checkpoint: Path, out: Path) -> list[str]:
    return ["export", str(checkpoint), "--out", str(out), "--precision", "fp32", "--opset", "17", "--no-check-ode"]


def logits_of(path: Path) -> np.ndarray:
    from edgenode.runtime import load_predictor

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with load_predictor(path, provider="cpu") as predictor:
        return predictor.predict_logits(x)


def test_export_replacing_a_model_is_read_whole_old_refused_or_whole_new_at_each_step(two_checkpoints, tmp_path, one_thread):
    """test_export_replacing_files_while_another_process_reads_them reads in a loop while an export runs: whether any
    read falls inside a write is chance. Here the exporter of other weights into the folder stops (1) with half the
    new model in its temporary, where a kill would leave it, then (2) with the new sidecar written and the model not
    yet renamed. At (1) the folder lists the one model and it runs whole and old; at (2) it is refused in one
    sha256 line; after, it runs whole and new."""
    from edgenode.runtime import find_artifacts
    from helpers import one_line

    old_ckpt, new_ckpt = two_checkpoints
    folder = tmp_path / "export"
    model = export_here(old_ckpt, folder)
    old = logits_of(model)
    proc, signals = start_pausing(tmp_path, ONNX_NAME, 1, *export_args(new_ckpt, folder), rename=True)
    with reaped(proc):
        wait_for(signals / "writing", proc)
        np.testing.assert_array_equal(logits_of(model), old)
        assert find_artifacts(folder) == [model] and any(p.name.endswith(".tmp") for p in folder.iterdir())
        (signals / "go-writing").touch()
        wait_for(signals / "renaming", proc)
        with pytest.raises(ArtifactError) as refused:
            logits_of(model)
        one_line(refused, f"{model}: sha256 ", "does not match its sidecar")
        (signals / "go-renaming").touch()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    new = logits_of(model)
    assert not np.array_equal(new, old)
    np.testing.assert_array_equal(new, logits_of(export_here(new_ckpt, tmp_path / "fresh")))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_export_killed_between_a_sidecar_and_its_model_leaves_the_earlier_model_refused_not_misread(two_checkpoints, tmp_path):
    """A model and its sidecar are two files, replaced one after the other: a re-export killed between the new
    sidecar and the rename of the new model leaves the earlier model whole beside a sidecar that is not its own.
    It must be refused in one line (re-export), never loaded with the new model's metadata."""
    from edgenode.artifacts import read_sidecar

    old_ckpt, new_ckpt = two_checkpoints
    folder = tmp_path / "export"
    model = export_here(old_ckpt, folder)
    proc, signals = start_pausing(tmp_path, ONNX_NAME, 1, *export_args(new_ckpt, folder), rename=True)
    with reaped(proc):
        (signals / "go-writing").touch()
        wait_for(signals / "renaming", proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    import onnx

    onnx.checker.check_model(str(model))  # the earlier model, whole
    with pytest.raises(ArtifactError, match="sha256"):  # ...beside the new model's sidecar: refused
        read_sidecar(model)


# --- bench: killed between rows ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_precisions(straight, tmp_path_factory) -> tuple[Path, Path]:
    from edgenode.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("fp32-fp16")
    export_model(ExportConfig(checkpoint=str(straight / "best.pt"), out=str(out), precisions="fp32,fp16", check_ode=False, opset=17))
    return out / ONNX_NAME, out / ONNX_NAME.replace("fp32", "fp16")


def test_a_bench_killed_as_a_time_limit_kills_it_keeps_the_rows_it_measured(straight, two_precisions, tmp_path):
    """A time limit (`timeout`: SIGTERM) or a kill runs no exception handler, so the rows must already be on disk:
    a real bench is terminated while it writes its report
    after the third row: bench.json and bench.md hold the first two rows, whole and marked incomplete, and an
    earlier bench's figure is gone."""
    fp32, fp16 = two_precisions
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.png").write_bytes(b"an earlier bench's figure")
    proc, signals = start_pausing(tmp_path, "bench.json", 3, "bench", fp32, fp16, "--reference", straight / "best.pt",
                                  "--batch-sizes", "1,4", "--repeats", "2", "--warmup", "1", "--threads", "1",
                                  "--providers", "cpu", "--no-peak", "--no-gpu", "--out", out)
    with reaped(proc):
        wait_for(signals / "writing", proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    saved = json.loads((out / "bench.json").read_text())
    assert [(r["group"], r["name"]) for r in saved["rows"]] == [("baseline", "best.pt (baseline)"), ("artifact", fp32.name)]
    assert any(n.startswith("incomplete: 2 rows measured") for n in saved["notes"])
    assert "incomplete: 2 rows measured" in (out / "bench.md").read_text()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["bench.json", "bench.md"]


# --- align: Ctrl-C, then run again ------------------------------------------------------------------------------


class InterruptedAligner:
    """Stands in for dlib (the picture's centre, resized); a Ctrl-C arrives at the ``stop_at``-th picture."""

    calls = 0

    def __init__(self, size: int, stop_at: int | None):
        self.size, self.stop_at = size, stop_at

    def __call__(self, rgb):
        InterruptedAligner.calls += 1
        if InterruptedAligner.calls == self.stop_at:
            raise KeyboardInterrupt
        h, w = rgb.shape[:2]
        crop = np.ascontiguousarray(rgb[h // 4 : h - h // 4, w // 4 : w - w // 4])
        return np.asarray(Image.fromarray(crop).resize((self.size, self.size), Image.Resampling.BILINEAR)), True


def test_ctrl_c_during_align_is_one_line_and_running_it_again_keeps_the_finished_chips(synthetic_root, tmp_path,
                                                                                      monkeypatch, capsys):
    """`edgenode align` interrupted at its fourth picture (in the aligner, where a Ctrl-C lands) ends in one line
    saying to run it again, exit 130, with its record and three whole chips on disk; run again, it keeps those three
    as they are and aligns the other three."""
    from edgenode import align
    from edgenode.cli.app import main
    from edgenode.data import discover_images

    data = tmp_path / "data"
    for path in sorted(synthetic_root.glob("images/*/*.png"))[:6]:
        (data / "images" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (data / "images" / path.parent.name / path.name).write_bytes(path.read_bytes())
    copy = tmp_path / "copy"
    command = ["align", str(data), "--out", str(copy), "--size", "32", "--workers", "1"]

    InterruptedAligner.calls = 0
    monkeypatch.setattr(align, "FaceAligner", lambda size, spec: InterruptedAligner(size, stop_at=4))
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted (what was written stays whole; run it again to continue)"
    assert json.loads((copy / align.ALIGN_FILE).read_text())["size"] == 32  # the record came first
    chips = sorted((copy / "images").glob("*/*.png"))
    assert len(chips) == 3 and all(Image.open(p).size == (32, 32) for p in chips)
    kept = {p: p.read_bytes() for p in chips}
    # a kill in the middle of saving a chip leaves its temporary (of a picture since removed from the source, so
    # that no chip of this run is written through the same name)
    (chips[0].parent / f".gone.png{align.CHIP_TMP_SUFFIX}").write_bytes(b"half a chip")
    (chips[0].parent / "gone.png.tmp").write_bytes(b"half a chip")  # as earlier versions named them

    InterruptedAligner.calls = 0
    monkeypatch.setattr(align, "FaceAligner", lambda size, spec: InterruptedAligner(size, stop_at=None))
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 0, capsys.readouterr().err
    record = json.loads((copy / align.ALIGN_FILE).read_text())
    assert (record["aligned_now"], record["already_there"]) == (3, 3)
    assert all(p.read_bytes() == before for p, before in kept.items())
    assert sum(map(len, discover_images(copy).values())) == 6  # chips only: no leftover is read as a picture
    assert not list(copy.rglob("*.tmp"))  # the rerun removed the killed writes' temporaries

    # a second align into a copy another one is writing would remove that one's chips in flight: refused
    from edgenode.run_lock import hold_run_folder

    capsys.readouterr()
    with hold_run_folder(copy, command="align"):
        with pytest.raises(SystemExit) as exited:
            main(command)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: --out {copy} is in use by another edgenode align (process {os.getpid()}) "
                                               "(wait for it to finish, or align into another --out)")
    assert not (copy / ".align.lock").exists()
