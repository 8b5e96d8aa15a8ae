"""Reliability and security: bad input, crashes, tampered artifacts, numeric failure, bad arguments, concurrency.

docs/GUARANTEES.md lists what edgenode guarantees; every line of it is a test (or a row of a test table) here.

- Bad input: a corpus of broken and odd files, generated here (``corpus``), goes through ``train``, ``export``
  (calibration), ``infer`` and ``parity``; ``CORPUS`` is the table of file x stage -> behaviour.
- Crashes: ``train`` is SIGKILLed at random points (real subprocesses) and resumed until it finishes with the
  very weights of an uninterrupted run; nothing under a final name is ever half-written.
- Artifacts: sha256 checked on load, mismatched metadata refused with what differs, pickles that would run
  code refused without running it.
- Numerics: FP16 overflow, NaN weights and saturated INT8 logits fail export and parity, naming the node.
- Arguments: every option's bad values, missing paths and wrong kinds of file exit 2 with one line.
- Concurrency: two ``infer`` processes on one artifact; ``export`` replacing files another process reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import whole_files
from edgenode.artifacts import read_sidecar, sidecar_path, write_sidecar
from edgenode.calibration import select_calibration_set
from edgenode.checkpoint import load_checkpoint, save_checkpoint
from edgenode.cli import app
from edgenode.data import Manifest, discover_images, make_synthetic_faces
from edgenode.errors import ArtifactError, ArtifactPathError, EdgenodeError, NumericError
from edgenode.export import numerics
from edgenode.export.metadata import ArtifactMetadata
from edgenode.export.onnx_export import read_metadata, save_onnx, set_metadata
from edgenode.runtime import find_artifacts, load_predictor

CORPUS_SIZE = 32  # px: the corpus model is tiny so that every stage runs in about a second


# --- helpers ------------------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, code: int, fragment: str) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line, and it contains ``fragment``."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError, KeyError))
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


def subprocess_env() -> dict[str, str]:
    """The test's environment (EDGENODE_CACHE included) with one thread: runs are then bit-for-bit repeatable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def edgenode_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "edgenode", *map(str, args)]




# --- the bad-input corpus -----------------------------------------------------------------------------------

PERSON = "Synthetic Person 00"  # the identity that holds the corpus
UNICODE_PERSON = "Zoë Ñuñez 李"  # unicode and spaces in an identity name
LINKED_PERSON = "Linked Person"  # an identity folder that is a symlink to a folder outside the data set

# name in PERSON's folder -> (what it is, train, export calibration, infer, parity): the table of docs/GUARANTEES.md.
# "skipped: R" = one `warning: skipped <path>: R` line, the file in manifest["skipped"], in no split.
# "error: R" = one `error: <path>: R` line, the other files still classified, exit 1.
# "not in a split" = export and parity read only the manifest's splits; a bad file can never reach them.
BAD = {
    "empty.jpg": ("zero-byte file", "empty file"),
    "truncated.jpg": ("JPEG cut in half", "corrupt or truncated image data"),
    "notes.jpg": ("text file named .jpg", "not an image (format not recognised)"),
    "bomb.png": ("PNG header claiming 20000x20000 (decompression bomb)", "too large"),
    "dangling.png": ("symlink to a missing file", "file not found"),
    "loop.jpg": ("symlink to itself", "cannot read file"),
}
# name -> (what it is, source it was made from, how the decoded picture must compare with the source)
GOOD = {
    "alpha.png": ("RGBA PNG, opaque", "Synthetic Person 00_010.png", "identical"),
    "palette.png": ("palette (P) PNG, 256 colours", "palette as rgb.png", "identical"),
    "grey.png": ("greyscale (L) PNG", "grey as rgb.png", "identical"),
    "deep16.png": ("16-bit greyscale PNG", "grey.png", "identical"),
    "cmyk.jpg": ("CMYK JPEG", "Synthetic Person 00_013.png", "close"),
    "exif rotated.png": ("pixels stored rotated, EXIF orientation 6", "Synthetic Person 00_014.png", "identical"),
    "link to face.png": ("symlink to a picture outside the data set", "Synthetic Person 00_015.png", "identical"),
    "photo Zoë 李.png": ("unicode and spaces in the file name", "Synthetic Person 00_016.png", "identical"),
}


def _png_claiming(width: int, height: int) -> bytes:
    """A 69-byte PNG whose header claims ``width`` x ``height`` pixels: a bomb that costs nothing to make."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _truncated_jpeg(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def build_corpus(base: Path) -> Path:
    """``base/data/images/<identity>/...`` with the BAD and GOOD files in PERSON's folder, an empty identity, a
    unicode identity and a symlinked one; the untouched originals of GOOD's sources live in ``base/sources``."""
    data = make_synthetic_faces(base / "data", n_classes=3, per_class=18, size=CORPUS_SIZE, seed=1)
    images = data / "images"
    person, sources = images / PERSON, base / "sources"
    sources.mkdir()
    for k in range(10, 18):  # the files the variants are made of leave the data set (no duplicates in it)
        shutil.move(person / f"{PERSON}_{k:03d}.png", sources / f"{PERSON}_{k:03d}.png")
    rgb = {name: Image.open(sources / name).convert("RGB") for name in os.listdir(sources)}
    rgb[f"{PERSON}_010.png"].convert("RGBA").save(person / "alpha.png")
    palette = rgb[f"{PERSON}_011.png"].convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    palette.save(person / "palette.png")
    grey = rgb[f"{PERSON}_012.png"].convert("L")
    grey.save(person / "grey.png")
    grey.save(sources / "grey.png")
    # what the palette and grey pictures look like, written as plain RGB: decoding them must give these pixels
    palette.convert("RGB").save(sources / "palette as rgb.png")
    grey.convert("RGB").save(sources / "grey as rgb.png")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(person / "deep16.png")  # I;16
    rgb[f"{PERSON}_013.png"].convert("CMYK").save(person / "cmyk.jpg", quality=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": store the picture turned the other way
    Image.fromarray(np.rot90(np.asarray(rgb[f"{PERSON}_014.png"]), 1)).save(person / "exif rotated.png", exif=exif.tobytes())
    os.symlink(sources / f"{PERSON}_015.png", person / "link to face.png")
    shutil.copy(sources / f"{PERSON}_016.png", person / "photo Zoë 李.png")

    (person / "empty.jpg").write_bytes(b"")
    (person / "truncated.jpg").write_bytes(_truncated_jpeg(rgb[f"{PERSON}_017.png"]))
    (person / "notes.jpg").write_text("<html>this is a web page, not a picture</html>\n")
    (person / "bomb.png").write_bytes(_png_claiming(20000, 20000))
    os.symlink(person / "missing.png", person / "dangling.png")
    os.symlink(person / "loop.jpg", person / "loop.jpg")

    (images / "Empty Person").mkdir()
    (images / "Synthetic Person 01").rename(images / UNICODE_PERSON)
    outside = base / "elsewhere" / "Synthetic Person 02"
    outside.parent.mkdir()
    (images / "Synthetic Person 02").rename(outside)
    os.symlink(outside, images / LINKED_PERSON)
    return data


def seed_visiting_every_file(data: Path) -> int:
    """A split seed whose shuffle (``random.Random(f"{seed}:{identity}")``, as build_manifest documents) ends
    with a good file: with per_class = all good files, every file of PERSON is then decoded."""
    files = discover_images(data)[PERSON]
    for seed in range(100):
        order = list(files)
        random.Random(f"{seed}:{PERSON}").shuffle(order)
        if Path(order[-1]).name not in BAD:
            return seed
    raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("corpus")
    data = build_corpus(base)
    return {"base": base, "data": data, "person": data / "images" / PERSON, "sources": base / "sources",
            "seed": seed_visiting_every_file(data)}


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    """``edgenode train`` on the corpus (paper preset, width 8, Euler x 2; learns it in a few seconds): the CLI
    result and the run folder."""
    out = tmp_path_factory.mktemp("corpus-run") / "run"
    result = invoke("train", corpus["data"], "--out", out, "--arch", "paper", "--width", 8, "--solver", "euler",
                    "--steps", 2, "--epochs", 12, "--batch-size", 12, "--lr", "1e-2", "--per-class", 18, "--train-per-class", 12,
                    "--val-per-class", 3, "--test-per-class", 3, "--image-size", CORPUS_SIZE, "--seed", corpus["seed"],
                    "--no-progress")
    assert result.exit_code == 0, result.output
    return result, out


@pytest.fixture(scope="module")
def corpus_export(corpus_run) -> Path:
    """FP32 and INT8 (ORT) exports of the corpus model: calibration drew from the corpus's train split."""
    result = invoke("export", corpus_run[1] / "best.pt", "--out", corpus_run[1] / "export", "--precision", "fp32,int8",
                    "--int8-target", "ort", "--opset", 17, "--no-check-ode")
    assert result.exit_code == 0, result.output
    return corpus_run[1] / "export" / "model-eulerx2-fp32.onnx"


@pytest.mark.parametrize("name", sorted(BAD))
def test_train_skips_each_bad_file_with_one_line_naming_it(corpus, corpus_run, name):
    result, run = corpus_run
    manifest = json.loads((run / "manifest.json").read_text())
    relpath = f"{PERSON}/{name}"
    reason = BAD[name][1]
    assert [r for f, r in manifest["skipped"] if f == relpath] and reason in dict(manifest["skipped"])[relpath]
    lines = [line for line in result.stderr.splitlines() if f"{os.sep}{name}:" in line]
    assert lines == [f"warning: skipped {corpus['person'] / name}: {dict(manifest['skipped'])[relpath]}"]
    assert all(relpath != f for split in manifest["splits"].values() for f, _ in split)
    assert "Traceback" not in result.output


def test_train_uses_every_odd_but_good_file_and_reports_the_empty_identity(corpus_run):
    result, run = corpus_run
    manifest = Manifest.load(run / "manifest.json")
    used = {f for split in ("train", "val", "test") for f in manifest.files(split)}
    assert {f"{PERSON}/{name}" for name in GOOD} <= used  # per_class = every good file of PERSON
    assert manifest.classes == [LINKED_PERSON, PERSON, UNICODE_PERSON]  # unicode, spaces and symlinked folders
    assert manifest.excluded == {"Empty Person": "no image files"}
    assert sum("excluded 1 identity" in line and "'Empty Person': no image files" in line
               for line in result.stderr.splitlines() if line.startswith("warning:")) == 1
    assert len(manifest.skipped) == len(BAD)


def _infer_records(artifact: Path, corpus: dict) -> tuple:
    result = invoke("infer", artifact, corpus["person"], corpus["sources"], "--json", "--top-k", 3, "--batch-size", 4)
    records = {Path(r["path"]).name if Path(r["path"]).parent != corpus["sources"] else "sources/" + Path(r["path"]).name: r
               for r in map(json.loads, result.stdout.splitlines())}
    return result, records


@pytest.fixture(scope="module")
def corpus_infer(corpus, corpus_export):
    return _infer_records(corpus_export, corpus)


@pytest.mark.parametrize("name", sorted(BAD))
def test_infer_reports_each_bad_file_in_one_line_and_goes_on(corpus, corpus_infer, name):
    result, records = corpus_infer
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert records[name]["ok"] is False and BAD[name][1] in records[name]["error"]
    path = corpus["person"] / name
    assert [line for line in error_lines(result) if line.startswith(f"error: {path}:")] == [f"error: {path}: {records[name]['error']}"]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_infer_classifies_odd_files_as_their_source_no_silent_wrong_class(corpus_infer, name):
    _, records = corpus_infer
    record = records[name]
    source = records["sources/" + GOOD[name][1]]
    assert record["ok"] and source["ok"]
    probabilities = {c["class"]: c["probability"] for c in record["top_k"]}
    expected = {c["class"]: c["probability"] for c in source["top_k"]}
    rule = GOOD[name][2]
    if rule == "identical":  # decoded to the very pixels of the source: same probabilities, same class
        assert max(abs(probabilities[c] - expected[c]) for c in expected) < 1e-5
        assert record["label"] == source["label"] or _margin(source) < 1e-4
    else:  # lossy re-encoding (CMYK JPEG at quality 100): nearly the same probabilities
        assert rule == "close"
        assert max(abs(probabilities[c] - expected[c]) for c in expected) < 0.05


def _margin(record: dict) -> float:
    """Top-1 minus top-2 probability: below ~1e-4 a float rounding difference may legitimately swap them."""
    top = sorted((c["probability"] for c in record["top_k"]), reverse=True)
    return top[0] - top[1]


def test_infer_on_a_checkpoint_treats_the_corpus_the_same(corpus, corpus_run, corpus_infer):
    _, from_onnx = corpus_infer
    result, from_checkpoint = _infer_records(corpus_run[1] / "best.pt", corpus)
    assert result.exit_code == 1
    assert {k: r["ok"] for k, r in from_checkpoint.items()} == {k: r["ok"] for k, r in from_onnx.items()}
    assert {k: r.get("error") for k, r in from_checkpoint.items()} == {k: r.get("error") for k, r in from_onnx.items()}
    decisive = [k for k, r in from_onnx.items() if r["ok"] and _margin(r) > 1e-4]
    assert decisive and all(from_checkpoint[k]["label"] == from_onnx[k]["label"] for k in decisive)


def _copy_data(corpus: dict, tmp_path: Path) -> Path:
    """A copy of the data set (symlinks kept): another folder, hence a cold image cache."""
    copy = tmp_path / "data-copy"
    shutil.copytree(corpus["data"], copy, symlinks=True)
    return copy


def test_export_calibration_refuses_a_split_file_that_no_longer_decodes(corpus, corpus_run, corpus_export, tmp_path):
    run = corpus_run[1]
    manifest = Manifest.load(run / "manifest.json")
    calibration = select_calibration_set(manifest, per_class=4, seed=0)
    copy = _copy_data(corpus, tmp_path)
    broken = next(f for f in calibration.files if f.startswith(UNICODE_PERSON))
    (copy / "images" / broken).unlink()
    (copy / "images" / broken).write_bytes(b"")  # the picture changed after the split was made
    out = tmp_path / "export"
    result = invoke("export", run / "best.pt", "--data", copy, "--out", out, "--precision", "int8", "--int8-target", "ort",
                    "--opset", 17, "--no-check-ode")
    line = assert_one_line_error(result, 1, "can no longer be decoded")
    assert f"{broken!r}: empty file" in line
    assert not list(out.glob("*int8*")) and not list(out.glob(".*.tmp"))
    assert corpus_export.is_file()  # the same export from the intact data set succeeded (fixture)


def test_parity_ignores_bad_files_outside_the_split_and_refuses_a_changed_one(corpus, corpus_run, corpus_export, tmp_path):
    run = corpus_run[1]
    args = ("--reference", run / "best.pt", "--reference-solver", "trained", "--no-attribution", "--out", tmp_path / "p")
    ok = invoke("parity", corpus_export, "--data", corpus["data"], *args)
    assert ok.exit_code == 0, ok.output
    copy = _copy_data(corpus, tmp_path)
    broken = next(f for f in Manifest.load(run / "manifest.json").files("test") if f.startswith(UNICODE_PERSON))
    (copy / "images" / broken).unlink()
    (copy / "images" / broken).write_text("not a picture any more\n")
    result = invoke("parity", corpus_export, "--data", copy, *args)
    line = assert_one_line_error(result, 1, "can no longer be decoded")
    assert f"{broken!r}: not an image" in line


def test_two_identity_folders_that_are_one_folder_are_refused(tmp_path):
    data = make_synthetic_faces(tmp_path / "d", n_classes=2, per_class=4, size=16)
    os.symlink(data / "images" / "Synthetic Person 01", data / "images" / "Alias")
    result = invoke("split", data, "--out", tmp_path / "m.json", "--per-class", 4, "--train", 2, "--val", 1,
                    "--test", 1, "--image-size", 16)
    line = assert_one_line_error(result, 1, "are the same folder")
    assert "'Alias'" in line and "'Synthetic Person 01'" in line


# --- crashes lose nothing -----------------------------------------------------------------------------------

TRAIN_EPOCHS = 16


def _train_cmd(data: Path, manifest: Path, out: Path, *extra) -> list[str]:
    return edgenode_cmd("train", data, "--out", out, "--manifest", manifest, "--arch", "paper", "--width", 8,
                        "--solver", "euler", "--steps", 2, "--epochs", TRAIN_EPOCHS, "--batch-size", 16, "--lr", "3e-3",
                        "--per-class", 24, "--train-per-class", 16, "--val-per-class", 4, "--test-per-class", 4,
                        "--no-progress", *extra)


def assert_nothing_half_written(folder: Path) -> None:
    """Every file under a final (non-hidden) name is complete: checkpoints load, JSON parses, CSV and PNG read."""
    for name in whole_files(folder):
        # a temporary of a write the kill interrupted, or the run's lock (the kill released it; the next run takes it)
        assert name.endswith(".tmp") or name == ".train.lock", name


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def test_sigkill_at_random_points_then_resume_gives_the_same_weights(synthetic_root, synthetic_manifest, tmp_path):
    manifest = synthetic_manifest.save(tmp_path / "manifest.json")
    env = subprocess_env()
    straight = subprocess.Popen(_train_cmd(synthetic_root, manifest, tmp_path / "straight"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "killed"
    rng = random.Random(20240611)
    kills, finished, log = 0, None, []  # log: (cycle, exit status, epoch of last.pt after the kill, temporaries left)
    for cycle in range(8):
        proc = subprocess.Popen(_train_cmd(synthetic_root, manifest, run, *(["--resume"] if cycle else [])), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 3:
            before, deadline = _mtime(run / "last.pt"), time.monotonic() + 120
            while proc.poll() is None and _mtime(run / "last.pt") == before and time.monotonic() < deadline:
                time.sleep(0.005)  # until this process has written a checkpoint of its own: every cycle progresses
            # then anywhere: mid-epoch, mid-write, during the final test pass (soon on the first cycle, so that
            # even a fast machine is killed at least once before it finishes)
            time.sleep(rng.uniform(0.0, 0.1 if cycle == 0 else 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=120)
            log.append((cycle, proc.returncode, load_checkpoint(run / "last.pt").epoch, sorted(p.name for p in run.glob(".*"))))
            assert_nothing_half_written(run)
            if proc.returncode == 0:
                finished = proc
                break
        else:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr
            finished = proc
            break
    assert finished is not None and kills >= 1, log
    _, stderr = straight.communicate(timeout=300)
    assert straight.returncode == 0, stderr

    assert_nothing_half_written(run)
    assert not list(run.glob(".*.tmp")) and not (run / ".train.lock").exists()  # the finished run removed its lock
    expected, actual = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(run / "last.pt")
    assert actual.epoch == expected.epoch == TRAIN_EPOCHS
    for name, tensor in expected.state_dict.items():
        torch.testing.assert_close(actual.state_dict[name], tensor, rtol=0, atol=0, msg=f"{name} after kills {log}")
    assert [r["val_accuracy"] for r in actual.history] == [r["val_accuracy"] for r in expected.history]
    assert load_checkpoint(run / "best.pt").epoch == load_checkpoint(tmp_path / "straight" / "best.pt").epoch
    results = [json.loads((folder / "results.json").read_text())["test"] for folder in (run, tmp_path / "straight")]
    assert [{k: v for k, v in r.items() if k != "checkpoint"} for r in results] == [
        {k: v for k, v in results[1].items() if k != "checkpoint"}] * 2




def test_resume_after_a_kill_between_the_last_checkpoint_and_the_metrics_rewrites_them(synthetic_root, tmp_path, one_thread):
    from edgenode.data import SplitConfig
    from edgenode.train import TrainConfig, train

    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "run"), arch="paper", width=8, solver="euler",
                         steps=2, epochs=2, batch_size=16, split=SplitConfig(per_class=24, train=16, val=4, test=4),
                         progress=False, table_every=0)
    train(config)
    run = tmp_path / "run"
    # the state a SIGKILL leaves just after last.pt of the final epoch is renamed into place: metrics one epoch behind
    history = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(history[:-1]))
    (run / "results.json").unlink()
    train(dataclasses.replace(config, resume=True))
    assert [row["epoch"] for row in json.loads((run / "metrics.json").read_text())] == [1, 2]


def test_training_whose_loss_becomes_nan_stops_loudly(synthetic_root, tmp_path, one_thread):
    from edgenode.data import SplitConfig
    from edgenode.train import TrainConfig, train

    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "run"), arch="paper", width=8, solver="euler",
                         steps=2, epochs=2, batch_size=16, lr=1e30, split=SplitConfig(per_class=24, train=16, val=4, test=4),
                         progress=False, table_every=0)
    with pytest.raises(NumericError, match=r"epoch 1: the training loss is nan") as raised:
        train(config)
    assert raised.value.hint.startswith("train again with a lower --lr into another --out") and raised.value.hint.endswith(
        "this epoch was not saved, nothing was saved")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_loss_that_becomes_nan_later_keeps_the_last_good_epoch(synthetic_root, tmp_path, one_thread, monkeypatch):
    """NaN in epoch 2: the run stops in one line, and last.pt holds epoch 1, as the hint says."""
    import torch

    import edgenode.train as train_module
    from edgenode.checkpoint import load_checkpoint
    from edgenode.data import SplitConfig
    from edgenode.train import TrainConfig, train

    real = train_module.run_epoch

    def poisoned_in_epoch_2(*args, **kwargs):
        if args[7] == 2:  # the epoch argument: weights gone NaN, as a diverging step leaves them
            with torch.no_grad():
                for parameter in args[1].parameters():
                    parameter.fill_(float("nan"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_epoch", poisoned_in_epoch_2)
    config = TrainConfig(data=str(synthetic_root), out=str(tmp_path / "run"), arch="paper", width=8, solver="euler",
                         steps=2, epochs=3, batch_size=16, split=SplitConfig(per_class=24, train=16, val=4, test=4),
                         progress=False, table_every=0)
    with pytest.raises(NumericError, match="epoch 2: the training loss is nan") as raised:
        train(config)
    assert raised.value.hint.endswith("this epoch was not saved, last.pt holds epoch 1")
    assert load_checkpoint(tmp_path / "run" / "last.pt").epoch == 1


def test_demo_killed_while_drawing_leaves_no_data_folder_and_the_rerun_draws_anew(tmp_path):
    """The demo draws into a hidden sibling and renames it into place: a draw killed half-way leaves nothing
    under data/ that a rerun could take for a finished data set (it used to train on the 35 identities drawn)."""
    from edgenode.demo import DATA_RECORD, DemoConfig, prepare_data

    out = tmp_path / "demo"
    proc = subprocess.Popen(edgenode_cmd("demo", "--out", out, "--classes", 200, "--no-progress"), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        while not list(out.glob(".data.*.tmp/images/*/*.png")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no image drawn"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "data").exists() and all(p.name.startswith(".") for p in out.iterdir())

    data = prepare_data(DemoConfig(out=str(out), n_classes=2, per_class=5, progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # the killed draw's leftover is gone
    assert len(discover_images(data)) == 2 and json.loads((data / DATA_RECORD).read_text())["classes"] == 2


def test_export_killed_mid_run_leaves_only_complete_files(corpus_run, tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen(edgenode_cmd("export", corpus_run[1] / "best.pt", "--out", out, "--precision", "fp32,fp16,int8",
                                         "--opset", 17, "--no-check-ode"), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not list(out.glob("*.onnx")) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.Random(7).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the export ended before the kill: nothing was interrupted"
    assert list(out.glob("*.onnx"))
    for path in out.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".tmp")
        elif path.suffix == ".onnx":
            onnx.checker.check_model(str(path))
            if sidecar_path(path).is_file():
                read_sidecar(path)  # sha256 of the complete file
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert all(load_predictor(p).metadata.classes for p in find_artifacts(out))  # every visible artifact runs


# --- artifacts are verified before use ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rk4x4(shared_exports) -> dict[str, Path]:
    return shared_exports


def _copy_with_sidecar(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (src.name, src.name + ".json", src.name + ".golden.npz"):
        if (src.parent / name).is_file():
            shutil.copy(src.parent / name, folder / name)
    return folder / src.name


def _rewrite(src: Path, dst: Path, proto=None, **metadata_changes) -> Path:
    """``src`` (or ``proto``) saved as ``dst`` with its metadata changed, in the props and a *valid* sidecar."""
    proto = proto if proto is not None else onnx.load(str(src))
    meta = ArtifactMetadata.from_onnx_props(read_metadata(src))
    meta = dataclasses.replace(meta, **metadata_changes)
    set_metadata(proto, meta.to_onnx_props())
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(proto, dst)
    write_sidecar(dst, meta.to_dict())
    return dst


def test_a_tampered_onnx_is_refused_by_every_stage(rk4x4, trained_run, synthetic_root, tmp_path):
    folder = tmp_path / "tampered"
    target = _copy_with_sidecar(rk4x4["fp32"], folder)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    target.write_bytes(bytes(data))
    fragment = "does not match its sidecar"
    assert_one_line_error(invoke("infer", target, synthetic_root / "images"), 1, fragment)
    assert_one_line_error(invoke("parity", target, "--reference", trained_run.best_checkpoint, "--data", synthetic_root,
                                 "--out", tmp_path / "p", "--no-attribution"), 1, fragment)
    assert_one_line_error(invoke("bench", target, "--reference", trained_run.best_checkpoint, "--no-peak", "--repeats", 1,
                                 "--warmup", 0, "--batch-sizes", 1, "--out", tmp_path / "b"), 1, fragment)
    verify = invoke("verify", folder)  # its table and the file's reason, then one error line naming the file
    assert_one_line_error(verify, 1, "could not be compared with their golden logits")
    assert fragment in verify.stderr


@pytest.mark.parametrize(("change", "fragment"), [
    ({"classes": [f"Somebody {i}" for i in range(6)]}, "classes (6 vs. 6, same number but other names/order)"),
    ({"classes": [f"Somebody {i}" for i in range(5)]}, "classes (5 vs. 6)"),
    ({"manifest_sha256": "0" * 64}, "manifest 000000000000… vs."),
    ("input_size", "input size 48 vs. 64 px"),
    ("normalisation", "normalisation mean/std"),
    ("std", "normalisation mean/std"),  # the same mean, another spread: parity would feed it the wrong pixels
])
def test_parity_refuses_an_artifact_made_for_other_inputs_saying_what_differs(rk4x4, trained_run, synthetic_root, tmp_path,
                                                                             change, fragment):
    meta = ArtifactMetadata.from_onnx_props(read_metadata(rk4x4["fp32"]))
    if change == "input_size":
        change = {"input": dataclasses.replace(meta.input, image_size=48)}
    elif change == "normalisation":
        change = {"input": dataclasses.replace(meta.input, mean=(0.5, 0.5, 0.5))}
    elif change == "std":
        change = {"input": dataclasses.replace(meta.input, std=(0.3, 0.3, 0.3))}
    other = _rewrite(rk4x4["fp32"], tmp_path / "other.onnx", **change)
    result = invoke("parity", other, "--reference", trained_run.best_checkpoint, "--data", synthetic_root,
                    "--out", tmp_path / "p", "--no-attribution")
    line = assert_one_line_error(result, 1, "does not match the reference best.pt")
    assert fragment in line


def test_an_artifact_without_its_sidecar_runs_unverified_or_is_refused(corpus, corpus_export, tmp_path):
    image = corpus["sources"] / f"{PERSON}_010.png"
    bare = tmp_path / corpus_export.name
    shutil.copy(corpus_export, bare)  # no .json beside it
    result = invoke("infer", bare, image)
    assert result.exit_code == 0 and " (unverified: no sidecar to check its sha256 against): onnx " in result.stderr
    assert "unverified" not in invoke("infer", corpus_export, image).stderr
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00\x01plan" * 64)  # an engine carries no metadata of its own
    assert_one_line_error(invoke("infer", engine, image), 1, "TensorRT engine without its metadata sidecar model.engine.json")


def test_export_refuses_a_manifest_of_another_split(trained_run, tmp_path):
    manifest = Manifest.load(trained_run.run_dir / "manifest.json")
    manifest.splits["test"] = manifest.splits["test"][1:]
    stale = manifest.save(tmp_path / "manifest.json")
    result = invoke("export", trained_run.best_checkpoint, "--manifest", stale, "--out", tmp_path / "e")
    assert_one_line_error(result, 1, "is not the split best.pt was trained on")


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_files(folder: Path, marker: Path, like: Path) -> dict[str, Path]:
    """Checkpoints whose loading with plain pickle would create ``marker``: torch zip, legacy torch, raw pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    good = torch.load(like, weights_only=True)
    payload = {**good, "metrics": {"best_val_accuracy": _RunsCode(marker)}}
    files = {"zip": folder / "zip.pt", "legacy": folder / "legacy.pt", "raw": folder / "raw.pt"}
    torch.save(payload, files["zip"])
    torch.save(payload, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw"].write_bytes(pickle.dumps(payload, protocol=2))
    return files


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(trained_run, synthetic_root, tmp_path):
    marker = tmp_path / "code-ran"
    files = _malicious_files(tmp_path / "evil", marker, trained_run.best_checkpoint)
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # the payload works: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    fragment = "refused: the file is a pickle that would run code when loaded ("
    image = next((synthetic_root / "images").glob("*/*.png"))
    for kind, path in files.items():
        with pytest.raises(ArtifactError, match=r"refused: the file is a pickle that would run code"):
            load_checkpoint(path)
        assert_one_line_error(invoke("infer", path, image), 1, fragment)
        assert_one_line_error(invoke("export", path, "--out", tmp_path / "e"), 1, fragment)
        assert_one_line_error(invoke("parity", path, "--reference", path, "--data", synthetic_root), 1, fragment)
        assert_one_line_error(invoke("bench", "--reference", path, "--no-peak"), 1, fragment)
        assert not marker.exists(), f"{kind}: the pickle ran"
    # resuming a run whose last.pt was replaced
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run.run_dir / "manifest.json", run / "manifest.json")
    shutil.copy(files["zip"], run / "last.pt")
    result = invoke("train", synthetic_root, "--out", run, "--resume", "--per-class", 24, "--train-per-class", 16,
                    "--val-per-class", 4, "--test-per-class", 4, "--no-progress")
    assert_one_line_error(result, 1, fragment)
    assert not marker.exists()


def test_golden_and_cache_files_are_never_unpickled(rk4x4, synthetic_root, synthetic_manifest, tmp_path):
    from edgenode.data import cache_path, load_split_arrays

    marker = tmp_path / "code-ran"
    folder = tmp_path / "golden"
    target = _copy_with_sidecar(rk4x4["fp32"], folder)
    evil = np.array([_RunsCode(marker)], dtype=object)
    with open(folder / (target.name + ".golden.npz"), "wb") as handle:
        np.savez(handle, inputs=evil, logits=evil, reference_logits=evil)
    result = invoke("verify", folder)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not marker.exists()

    copy = tmp_path / "data"
    shutil.copytree(synthetic_root, copy)
    cached = cache_path(synthetic_manifest, copy, "val")
    with open(cached, "wb") as handle:
        np.savez(handle, images=evil, labels=evil)
    images, _ = load_split_arrays(synthetic_manifest, copy, "val")  # a bad cache file is a miss, decoded again
    assert images.dtype == np.uint8 and not marker.exists()


# --- numeric failure is loud ----------------------------------------------------------------------------------


def _tiny_graph(huge: float):
    """x -> Mul(huge) -> Mul(huge) -> Sub(self) -> y: overflows to inf at the 2nd Mul, NaN only at the Sub."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="first_mul"),
             helper.make_node("Mul", ["a", "k"], ["b"], name="second_mul"),
             helper.make_node("Sub", ["b", "b"], ["logits"], name="sub")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor("k", TensorProto.FLOAT, [], [huge])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scan_names_the_node_where_inf_starts_not_where_it_is_noticed():
    import onnxruntime as ort

    model = _tiny_graph(1e30)
    x = np.ones((2, 3), np.float32)
    scan = numerics.scan_numerics(model, x)
    assert [(p.node, p.kind) for p in scan.problems] == [("second_mul", "inf/NaN"), ("sub", "inf/NaN")]
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isnan(logits).all()
    with pytest.raises(NumericError, match=r"2 of 2 images give inf/NaN logits; it starts at node 'second_mul' \(Mul"):
        numerics.check_logits(model, logits, x, "test model", "two images")
    assert not numerics.scan_numerics(_tiny_graph(2.0), x).problems


def _scaled_cosine_head(quant_scale: float):
    """x -> MatMul(w) -> QuantizeLinear/DequantizeLinear -> Mul(Exp(log_scale)) -> logits: the cosine head's shape."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["cos"], name="matmul"),
             helper.make_node("QuantizeLinear", ["cos", "s", "z"], ["cos_q"], name="cos_quant"),
             helper.make_node("DequantizeLinear", ["cos_q", "s", "z"], ["cos_dq"], name="cos_dequant"),
             helper.make_node("Exp", ["log_scale"], ["scale"], name="exp"),
             helper.make_node("Mul", ["cos_dq", "scale"], ["logits"], name="scaled")]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel() * 0.9),
             helper.make_tensor("s", TensorProto.FLOAT, [], [quant_scale]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128]),
             helper.make_tensor("log_scale", TensorProto.FLOAT, [], [3.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_quantizer_clipping_the_cosines_saturates_the_logits_it_scales():
    """The cosine head's logits are Mul(cosines, exp(log_scale)): a quantizer that clips the cosines clips the
    logits, and was only an inner-tensor warning because the walk from the logits stopped at the Mul."""
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, size=(8, 3)).astype(np.float32)
    for scale, fails in ((1e-3, True), (1 / 127, False)):  # ±0.13 clips most cosines; ±1 none
        model = _scaled_cosine_head(scale)
        logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        if fails:
            with pytest.raises(NumericError, match="cos_quant"):
                numerics.check_logits(model, logits, x, "test model", "eight images", precision="int8")
        else:
            assert numerics.check_logits(model, logits, x, "test model", "eight images", precision="int8") is None


@pytest.fixture(scope="module")
def overflow(trained_run, tmp_path_factory):
    """The trained model with its first conv scaled by 2e5: GroupNorm makes FP32 identical, FP16 overflows.

    Returns (run folder, export folder, the NumericError that export raised)."""
    from edgenode.export import ExportConfig, export_model

    run = tmp_path_factory.mktemp("overflow")
    ckpt = load_checkpoint(trained_run.best_checkpoint)
    first = next(k for k, v in ckpt.state_dict.items() if v.ndim == 4)  # the stem's first conv weight
    ckpt.state_dict = {k: v * 2e5 if k in (first, first.replace("weight", "bias")) else v for k, v in ckpt.state_dict.items()}
    shutil.copy(trained_run.run_dir / "manifest.json", run / "manifest.json")
    save_checkpoint(run / "best.pt", ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(NumericError) as info:
            export_model(ExportConfig(checkpoint=str(run / "best.pt"), out=str(run / "export"), precisions="fp32,fp16",
                                      steps=2, method="rk4", check_ode=False, opset=17))
    finally:
        torch.set_num_threads(threads)
    return run, run / "export", info.value


def _first_conv(path: Path) -> str:
    return next(node.name for node in onnx.load(str(path)).graph.node if node.op_type == "Conv")


def test_fp16_overflow_fails_export_naming_the_first_layer(overflow):
    _, out, error = overflow
    fp32 = out / "model-rk4x2-fp32.onnx"
    assert fp32.is_file()  # FP32 is fine, and written
    message = str(error)
    assert message.startswith("FP16 model on validation images: ")
    assert "give inf/NaN logits; it starts at node " + repr(_first_conv(fp32)) + " (Conv" in message
    assert not (out / "model-rk4x2-fp16.onnx").exists() and not list(out.glob(".*.tmp"))


def test_fp16_overflow_fails_parity_naming_the_first_layer(overflow, trained_run, synthetic_root, tmp_path):
    from edgenode.export.fp16 import convert_to_fp16

    fp32 = overflow[1] / "model-rk4x2-fp32.onnx"
    fp16 = _rewrite(fp32, tmp_path / "model-rk4x2-fp16.onnx", proto=convert_to_fp16(onnx.load(str(fp32))), precision="fp16")
    result = invoke("parity", fp16, "--reference", overflow[0] / "best.pt", "--data", synthetic_root,  # its own checkpoint
                    "--out", tmp_path / "p", "--no-attribution")
    line = assert_one_line_error(result, 1, "1 of 1 artifact(s) fail parity")
    assert "not from the reference" not in line  # the overflow alone fails it
    assert "images give inf/NaN logits; it starts at node " + repr(_first_conv(fp32)) + " (Conv" in line


def test_nan_weights_fail_fp32_export_naming_the_first_node(trained_run, tmp_path, one_thread):
    from edgenode.export import ExportConfig, export_model

    ckpt = load_checkpoint(trained_run.best_checkpoint)
    name = [k for k, v in ckpt.state_dict.items() if v.ndim == 4][-1]  # the last conv of the stem
    weight = ckpt.state_dict[name].clone()
    weight.view(-1)[0] = float("nan")
    ckpt.state_dict = {**ckpt.state_dict, name: weight}
    shutil.copy(trained_run.run_dir / "manifest.json", tmp_path / "manifest.json")
    save_checkpoint(tmp_path / "best.pt", ckpt)
    with pytest.raises(NumericError) as info:
        export_model(ExportConfig(checkpoint=str(tmp_path / "best.pt"), out=str(tmp_path / "e"), steps=2, method="rk4",
                                  check_ode=False, opset=17))
    assert "FP32 model on validation images:" in str(info.value) and "give inf/NaN logits; it starts at node" in str(info.value)
    assert "holds 1 inf/NaN of" in str(info.value)  # the NaN weight itself is named
    assert not list((tmp_path / "e").glob("*.onnx"))


def _narrow_logits_quantizer(proto, factor: float = 20.0):
    """Shrink the scale of the quantizer in front of the logits: a calibration range far too narrow for them."""
    from onnx import numpy_helper

    node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.output[0].startswith("logits"))
    init = next(i for i in proto.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / np.float32(factor), init.name))
    return proto


def test_saturated_int8_logits_fail_export_naming_the_layer(trained_run, tmp_path, monkeypatch, one_thread):
    from edgenode.export import ExportConfig, export_model
    from edgenode.export import pipeline

    original = pipeline.int8_mod.quantize_int8
    monkeypatch.setattr(pipeline.int8_mod, "quantize_int8", lambda *a, **k: _narrow_logits_quantizer(original(*a, **k)))
    with pytest.raises(NumericError) as info:
        export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(tmp_path / "e"), steps=2,
                                  method="rk4", precisions="int8", int8_target="ort", check_ode=False, opset=17))
    message = str(info.value)
    assert message.startswith("INT8 (ort) model on validation images: logits saturated at node 'logits_QuantizeLinear'")
    assert "to its INT8 range" in message
    assert not (tmp_path / "e" / "model-rk4x2-int8-ort.onnx").exists()


def test_a_saturated_inner_tensor_is_an_export_warning(trained_run, tmp_path, monkeypatch, one_thread):
    from edgenode.calibration.select import CalibrationSet
    from edgenode.export import ExportConfig, export_model

    original = CalibrationSet.load_images

    def too_dark(*args, **kwargs):
        return original(*args, **kwargs) * 0.1  # calibration images far darker than the data

    monkeypatch.setattr(CalibrationSet, "load_images", too_dark)
    result = export_model(ExportConfig(checkpoint=str(trained_run.best_checkpoint), out=str(tmp_path / "e"), steps=2,
                                       method="rk4", precisions="int8", int8_target="tensorrt", check_ode=False, opset=17))
    warnings = [w for w in result.report["warnings"] if w.startswith("INT8 (tensorrt) model on validation images: node ")]
    assert len(warnings) == 1 and "'images_QuantizeLinear' (QuantizeLinear" in warnings[0] and "clips" in warnings[0]
    assert "(the logits are not saturated on these images)" in warnings[0]
    assert (tmp_path / "e" / "model-rk4x2-int8-trt.onnx").is_file()


def test_saturated_int8_logits_fail_parity_and_an_inner_one_is_named(rk4x4, trained_run, synthetic_root, tmp_path, one_thread):
    from edgenode.export.int8 import quantize_int8

    calibration = select_calibration_set(Manifest.load(trained_run.run_dir / "manifest.json"), 4, 0).load_images(
        Manifest.load(trained_run.run_dir / "manifest.json"), synthetic_root)
    saturated = _rewrite(rk4x4["fp32"], tmp_path / "a" / "model-rk4x4-int8-ort.onnx", precision="int8", int8_target="ort",
                         proto=_narrow_logits_quantizer(quantize_int8(rk4x4["fp32"], "ort", calibration)))
    result = invoke("parity", saturated, "--reference", trained_run.best_checkpoint, "--data", synthetic_root,
                    "--out", tmp_path / "p1", "--no-attribution")
    line = assert_one_line_error(result, 1, "fail parity")
    assert "logits saturated at node 'logits_QuantizeLinear' (QuantizeLinear" in line

    dim = _rewrite(rk4x4["fp32"], tmp_path / "b" / "model-rk4x4-int8-trt.onnx", precision="int8", int8_target="tensorrt",
                   proto=quantize_int8(rk4x4["fp32"], "tensorrt", calibration * 0.1))  # calibrated on far too dark images
    result = invoke("parity", dim, "--reference", trained_run.best_checkpoint, "--data", synthetic_root,
                    "--out", tmp_path / "p2", "--no-attribution")
    assert result.exit_code == 1
    notes = json.loads((tmp_path / "p2" / "parity.json").read_text())["results"][0]["notes"]
    assert any(n.startswith("numerics: node 'images_QuantizeLinear' (QuantizeLinear") and "clips" in n for n in notes)


# --- bad arguments: exit 2, one line --------------------------------------------------------------------------

# (command line with {placeholders}, fragment of the one error line); {nope} never exists, {file} is a plain file
BAD_ARGUMENTS = [
    ("train {data} --out {new} --steps -1", "solver steps must be a positive integer"),
    ("train {data} --out {new} --steps 0", "solver steps must be a positive integer, got 0 (pass --steps 1 or more)"),
    # an option the solver would not read, recorded in the checkpoint as if it had been trained with
    ("train {data} --out {new} --steps 8", "--steps 8: dopri5 is adaptive and chooses its own steps (drop --steps, or"),
    ("train {data} --out {new} --solver rk4 --steps 4 --rtol 1e-5 --atol 1e-4",
     "--rtol 1e-05 --atol 0.0001: rk4 × 4 takes fixed steps, with no tolerance (drop them, or pass an adaptive --solver"),
    ("train {data} --out {new} --arch faceode --atol 1e-4", "--atol 0.0001: rk4 × 2 takes fixed steps, with no tolerance"),
    ("train {data} --out {new} --width 0", "model width must be at least 4 channels, got 0 (pass --width 4 or more)"),
    ("train {data} --out {new} --epochs 0", "--epochs must be at least 1"),
    ("train {data} --out {new} --batch-size -1", "--batch-size must be at least 1"),
    ("train {data} --out {new} --rtol -1", "solver tolerances must be finite and positive"),
    ("train {data} --out {new} --rtol inf", "solver tolerances must be finite and positive, got rtol=inf"),
    ("train {data} --out {new} --epochs 2 --warmup-epochs 2",
     "--warmup-epochs 2 is not shorter than --epochs 2: the learning rate would never reach --lr (pass --warmup-epochs 1 or fewer (0: none))"),
    ("train {data} --out {new} --dropout 2", "dropout must be in [0, 1)"),
    ("train {data} --out {new} --augment --augment-shift 0.8", "--augment-shift must be a fraction of the image side in [0, 0.5]"),
    ("train {data} --out {new} --augment --augment-color nan", "--augment-color must be a strength in [0, 1], got nan"),
    ("train {data} --out {new} --augment-color 0.4", "--augment-color sets the colour jitter of --augment, which is off"),
    ("train {data} --out {new} --device tpu", "unknown device 'tpu'"),
    ("train {data} --out {new} --arch resnet", "unknown model preset 'resnet'"),
    ("train {data} --out {new} --solver rk9", "unknown ODE solver 'rk9'"),
    ("train {data} --out {new} --schedule steps", "unknown schedule 'steps'"),
    ("train {data} --out {new} --per-class 0", "--per-class 0 is not a positive integer"),
    ("train {data} --out {new} --image-size 4", "--image-size 4 is out of range"),
    ("train {nope} --out {new}", "does not exist"),
    ("train {image} --out {new}", "is not a directory"),
    ("train {data} --out {new} --manifest {nope}", "file not found"),
    ("train {data} --out {new} --manifest {ckpt}", "is a training checkpoint, not a split manifest"),
    ("train {data} --out {new} --manifest {sidecar}", "not an edgenode split manifest"),
    ("train {data} --out {new} --teacher {nope}", "--teacher {nope}: file not found"),
    ("train {data} --out {new} --teacher {folder}", "is a folder, not a file"),
    ("train {data} --out {new} --unlabeled", "--unlabeled needs --teacher"),
    ("train {data} --out {new} --arch faceode --teacher {file} --kd-targets {nope}", "--kd-targets {nope}: file not found"),
    ("train {data} --out {new} --init {nope}", "--init {nope}: file not found"),
    ("train {data} --out {new} --teacher {file}", "the 'odenet' preset has no embedding head to distil into"),
    ("train {data} --out {new} --arch faceode --teacher {file} --distill-weight -1", "--distill-weight must be a finite number >= 0"),
    ("train {data} --out {new} --arch faceode --teacher {file} --kd-weight nan", "--kd-weight must be a finite number >= 0"),
    ("train {data} --out {new} --arch faceode --teacher {file} --near-duplicates {file}", "--near-duplicates is only used"),
    ("export {onnx} --out {new}", "is an ONNX model, but `edgenode export` needs a training checkpoint"),
    ("export {nope} --out {new}", "file not found"),
    ("export {ckpt} --out {new} --steps -3", "--steps -3"),
    ("export {ckpt} --out {new} --steps 0", "--steps 0"),
    ("export {ckpt} --out {new} --steps 300", "--steps 300 is out of range: an unrolled graph holds 1 to 256 steps"),
    ("export {ckpt} --out {new} --steps many", "--steps 'many'"),
    ("export {ckpt} --out {new} --precision fp64", "--precision 'fp64' is not known"),
    ("export {ckpt} --out {new} --precision ,", "--precision is empty"),
    ("export {ckpt} --out {new} --method rk9", "--method 'rk9'"),
    ("export {ckpt} --out {new} --format tflite", "--format 'tflite' is not known"),
    ("export {ckpt} --out {new} --data {nope}", "--data {nope} does not exist"),
    ("export {ckpt} --out {new} --manifest {nope}", "not found"),
    ("export {ckpt} --out {new} --manifest {onnx}", "is an ONNX model, not a split manifest"),
    ("export {ckpt} --out {new} --int8-target gpu", "--int8-target 'gpu' is not known"),
    ("export {ckpt} --out {new} --calibration-per-class 0", "--calibration-per-class 0"),
    ("export {ckpt} --out {new} --calibration-method magic", "--calibration-method 'magic'"),
    ("export {ckpt} --out {new} --opset 9", "--opset 9 is not supported"),
    ("export {ckpt} --out {new} --engine-opt-batch 0", "--engine-opt-batch 0"),
    ("export {ckpt} --out {new} --engine-max-batch -1", "--engine-max-batch -1"),
    ("export {ckpt} --out {new} --engine-workspace-mib 0", "--engine-workspace-mib 0"),
    ("export {ckpt} --out {file}", "--out {file}: is a file, not a folder"),
    ("infer {nope} {image}", "file not found"),
    ("infer {folder} {image}", "is a folder, not a model file"),
    ("infer {image} {image}", "is an image, not a model (pass a .pt checkpoint, an .onnx file or a TensorRT .engine; the pictures come after it)"),
    ("evaluate {image} {data}", "is an image, not a model (pass a .pt checkpoint, an .onnx file or a TensorRT .engine)"),
    ("infer {sidecar} {image}", "is a JSON file (an artifact's metadata sidecar), not a model (pass the model file itself, model-"),
    ("infer {manifest} {image}", "manifest.json: is a JSON file, not a model (pass a .pt checkpoint, an .onnx file or a TensorRT .engine"),
    ("infer {onnx} {nope}", "no such file or folder"),
    ("infer {onnx} {image} --top-k 0", "--top-k 0: must be at least 1"),
    ("infer {onnx} {image} --batch-size -1", "--batch-size -1: must be at least 1"),
    ("infer {onnx} {image} --workers -1", "--workers -1: must be at least 0"),
    ("infer {onnx} {image} --provider gpu", "unknown provider 'gpu'"),
    ("infer {ckpt} {image} --provider tensorrt", "does not apply to a training checkpoint"),
    ("parity {onnx} --reference {onnx} --data {data}", "is an ONNX model, but --reference needs a training checkpoint"),
    ("parity {ckpt} --reference {ckpt} --data {data}", "is a checkpoint; parity compares exported artifacts"),
    ("parity {nope} --reference {ckpt} --data {data}", "file not found"),
    ("parity {onnx} --reference {nope} --data {data}", "file not found"),
    ("parity {onnx} --reference {ckpt} --data {nope}", "--data {nope} does not exist"),
    ("parity {onnx} --reference {ckpt} --data {data} --manifest {nope}", "split manifest not found"),
    ("parity {onnx} --reference {ckpt} --data {data} --split holdout", "--split 'holdout' is not known"),
    ("parity {onnx} --reference {ckpt} --data {data} --max-drop -1", "--max-drop must be >= 0"),
    ("parity {onnx} --reference {ckpt} --data {data} --min-agreement 101", "--min-agreement must be a percentage"),
    ("parity {onnx} --reference {ckpt} --data {data} --int8-min-agreement -1", "--int8-min-agreement must be a percentage"),
    ("parity {onnx} --reference {ckpt} --data {data} --max-logit-error -1", "--max-logit-error must be >= 0"),
    ("parity {onnx} --reference {ckpt} --data {data} --reference-solver rk4", "is a fixed-step method"),
    ("parity {onnx} --reference {ckpt} --data {data} --reference-solver magic", "unknown ODE solver 'magic'"),
    ("parity {onnx} --reference {ckpt} --data {data} --reference-tol -1", "--reference-tol -1.0: must be a finite number > 0"),
    ("parity {onnx} --reference {ckpt} --data {data} --reference-solver trained --reference-tol 1e-4",
     "--reference-tol 0.0001 applies only with --reference-solver METHOD (drop it: the 'trained' reference keeps"),
    ("parity {onnx} --reference {ckpt} --data {data} --provider gpu", "unknown provider 'gpu'"),
    ("parity {onnx} --reference {ckpt} --data {data} --batch-size 0", "--batch-size must be at least 1"),
    ("parity {onnx} --reference {ckpt} --data {data} --out {file}", "is a file, not a folder"),
    ("verify {nope}", "folder not found"),
    ("verify {onnx}", "is a file, not a folder"),
    ("verify {folder} --atol -1", "tolerances must be >= 0"),
    ("verify {folder} --atol nan", "tolerances must be >= 0 and finite"),
    ("verify {folder} --rtol inf", "tolerances must be >= 0 and finite"),
    ("verify {folder} --provider gpu", "unknown provider 'gpu'"),
    ("bench", "nothing to bench"),
    ("bench --reference {nope}", "file not found"),
    ("bench --reference {onnx}", "is an ONNX model, but --reference needs a training checkpoint"),
    ("bench {nope} --reference {ckpt}", "file not found"),
    ("bench {onnx} --reference {ckpt} --data {nope}", "--data {nope} does not exist"),
    ("bench {onnx} --batch-sizes 0", "--batch-sizes '0' must be a positive whole number"),
    ("bench {onnx} --repeats 0", "--repeats 0"),
    ("bench {onnx} --warmup -1", "--warmup -1"),
    ("bench {onnx} --threads 0", "--threads 0"),
    ("bench {onnx} --providers gpu", "--providers 'gpu' is not known"),
    ("bench {onnx} --baseline-solver magic", "unknown ODE solver 'magic'"),
    ("bench {onnx} --baseline-solver dopri5 --baseline-tol -1", "--baseline-tol must be > 0"),
    ("bench {onnx} --baseline-solver dopri5 --baseline-tol 1e-20", "--baseline-tol 1e-20: the baseline runs in float32"),
    ("bench {onnx} --baseline-tol 1e-3", "--baseline-tol applies only with --baseline-solver METHOD"),
    ("bench {onnx} --sweep-steps -1", "--sweep-steps '-1'"),
    ("bench {onnx} --sweep-method dopri5", "--sweep-method 'dopri5' is not a fixed-step method"),
    ("bench {onnx} --sweep-backends tflite", "--sweep-backends 'tflite' is not known"),
    ("bench {onnx} --opset 9", "--opset 9 is not supported"),
    ("bench {onnx} --peak-matmul-size 0", "--peak-matmul-size 0"),
    ("bench {onnx} --peak-matmul-size 100000", "--peak-matmul-size 100000"),
    ("bench {onnx} --sweep-steps 1,300", "--sweep-steps 300 is out of range"),
    ("bench {onnx} --gpu-steps 0", "--gpu-steps '0'"),
    ("bench {onnx} --split holdout", "--split 'holdout' is not known"),
    ("bench {onnx} --out {file}", "is a file, not a folder"),
    ("split {nope}", "does not exist"),
    ("split {data} --per-class 0", "--per-class 0 is not a positive integer"),
    ("split {data} --train 90", "is more than --per-class 86"),
    ("split {data} --out {folder}", "is a folder, not a file"),
    # an output under a file: refused up front, naming the file in the way, not after the work
    ("train {data} --out {file}/run", "--out {file}/run: {file} is a file, not a folder (pass a folder path)"),
    ("export {ckpt} --out {file}/sub", "--out {file}/sub: {file} is a file, not a folder (pass a folder path)"),
    ("parity {onnx} --reference {ckpt} --data {data} --out {file}/p", "--out {file}/p: {file} is a file, not a folder"),
    ("bench {onnx} --out {file}/b", "--out {file}/b: {file} is a file, not a folder"),
    ("align {data} --out {file}", "--out {file}: is a file, not a folder (pass a folder path)"),
    ("align {data} --out {file}/aligned", "--out {file}/aligned: {file} is a file, not a folder"),
    ("teacher {data} --out {file}/t.npz", "--out {file}/t.npz: {file} is a file, not a folder"),
    ("split {data} --out {file}/m.json", "--out {file}/m.json: {file} is a file, not a folder"),
    ("demo --out {file}", "--out {file}: is a file, not a folder (pass a folder path)"),
    ("demo --out {file}/d", "--out {file}/d: {file} is a file, not a folder"),
    ("demo --out {new} --classes 1", "--classes 1: the demo needs at least 2 identities to classify (pass --classes 2 or more)"),
    ("demo --out {new} --per-class 3", "--per-class 3: too few images per identity"),
    ("demo --out {new} --per-class 7", "and 4 to train on, which INT8 export calibrates on (pass --per-class 8 or more)"),
    ("demo --out {new} --epochs 0", "--epochs 0: the demo needs at least 1 epoch"),
    ("train {data} --out {new} --ema-decay 2", "--ema-decay must be in [0, 1), got 2.0"),
    ("train {data} --out {new} --stop-after 0", "--stop-after 0: must be an epoch of the schedule"),
    ("train {data} --out {new} --label-weight -1", "--label-weight must be a finite number >= 0, got -1.0 (pass 0"),
    ("train {data} --out {new} --label-smoothing 1", "--label-smoothing must be in [0, 1), got 1.0 (pass e.g. 0.1"),
    ("train {data} --out {new} --atol -1", "solver tolerances must be finite and positive, got rtol=0.001 atol=-1.0"),
    ("train {data} --out {new} --val-per-class 0", "--val-per-class 0 is not a positive integer"),
    ("split {data} --test 0", "--test-per-class 0 is not a positive integer"),  # split's short spelling, named as train spells it
    ("split {data} --test-per-class 0", "--test-per-class 0 is not a positive integer"),
    ("split {data} --train-per-class 90", "is more than --per-class 86 (raise --per-class or lower --train-per-class/"),
    ("split {data} --image-size 0", "--image-size 0 is not a positive integer"),
    ("export {ckpt} --out {new} --opset 21", "--opset 21 is not supported"),
    ("parity {onnx} --reference {ckpt} --data {data} --int8-max-drop -1", "--int8-max-drop must be >= 0 percentage points"),
    ("engine {nope}", "ONNX {nope}: path not found"),
    ("engine {folder} --engine-opt-batch 0", "--engine-opt-batch 0 must be a positive whole number"),
    ("engine {folder} --engine-opt-batch 8 --engine-max-batch 4", "--engine-max-batch 4 is below --engine-opt-batch 8"),
    ("evaluate {nope} {data}", "ARTIFACT {nope}: file not found"),
    ("evaluate {ckpt} {file}", "DATA {file}: is a file, not a folder"),
    ("evaluate {ckpt} {data} --split nope", "--split 'nope' is not known (choose one of train, val, test)"),
    ("evaluate {ckpt} {data} --batch-size 0", "--batch-size must be at least 1, got 0"),
    ("evaluate {ckpt} {data} --out {file}/r", "--out {file}/r: {file} is a file, not a folder"),
    ("evaluate {ckpt} {data} --manifest {folder}", "--manifest {folder}: is a folder, not a file"),
    ("evaluate {ckpt} {data} --split train --near-duplicates {file}", "--near-duplicates compares the split with train"),
    ("evaluate {onnx} {data} --mirror-average", "classifies each picture alone; that is baked into it"),
    ("evaluate {ckpt} {data} --exclude {ckpt}", "--exclude {ckpt}: is a training checkpoint, not a text file"),
    ("teacher-views {data} --manifest {nope}", "--manifest {nope}: file not found"),
    ("teacher-views {data} --manifest {manifest} --views 0", "--views 0: a bank needs at least one view per picture (pass --views 1"),
    ("teacher-views {data} --manifest {manifest} --workers -1", "--workers -1: must be 0 or more (pass --workers 0 for one process"),
    ("train {data} --out {new} --arch faceode --teacher {onnx}", "{onnx}: is an ONNX model, not a teacher descriptor .npz"),
    ("teacher {data} --workers -2", "--workers -2: must be 0 or more (pass --workers 0 for one process per core)"),
]


@pytest.fixture(scope="module")
def argument_paths(corpus, corpus_run, corpus_export, tmp_path_factory) -> dict[str, str]:
    scratch = tmp_path_factory.mktemp("arguments")
    plain = scratch / "plain.txt"
    plain.write_text("a plain file\n")
    return {"data": str(corpus["data"]), "ckpt": str(corpus_run[1] / "best.pt"), "onnx": str(corpus_export),
            "sidecar": str(sidecar_path(corpus_export)), "folder": str(corpus_export.parent),
            "image": str(corpus["sources"] / f"{PERSON}_010.png"), "nope": str(scratch / "nope.onnx"),
            "file": str(plain), "new": str(scratch / "new-run"), "manifest": str(corpus_run[1] / "manifest.json")}


@pytest.mark.parametrize(("command", "fragment"), BAD_ARGUMENTS, ids=[c for c, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_and_exit_2(argument_paths, command, fragment):
    import shlex

    args = [part.format(**argument_paths) for part in shlex.split(command)]
    new = Path(argument_paths["new"])
    try:
        result = invoke(*args)
        assert_one_line_error(result, 2, fragment.format(**argument_paths))
        assert not new.exists() or not any(new.iterdir())  # refused before anything was written
    finally:
        shutil.rmtree(new, ignore_errors=True)


@pytest.mark.parametrize(("command", "fragment"), [
    ("train {data} --out {new} --lr nan", "--lr nan: the learning rate must be a finite number > 0 (pass e.g. --lr 5e-4"),
    ("train {data} --out {new} --lr inf", "--lr inf: the learning rate must be a finite number > 0"),
    ("train {data} --out {new} --lr -1", "--lr -1.0: the learning rate must be a finite number > 0"),
    ("train {data} --out {new} --lr 1e300", "--lr 1e+300: the learning rate must be a finite number > 0"),
    ("train {data} --out {new} --seed 99999999999999999999", "--seed 99999999999999999999: must be in [0, 2**32)"),
    ("train {data} --out {new} --rtol 1e-20 --atol 1e-20", "--rtol 1e-20 --atol 1e-20: training runs in float32, which resolves no error below 1.2e-07"),
    ("train {data} --out {new} --weight-decay nan", "--weight-decay nan: must be a finite number >= 0 (pass e.g."),
    ("train {data} --out {new} --warmup-epochs -1", "--warmup-epochs must be >= 0"),
    ("train {data} --out {file}", "--out {file}: is a file, not a folder"),
])
def test_bad_train_argument_is_one_line_and_exit_2_once_train_is_fixed(argument_paths, command, fragment):
    test_bad_argument_is_one_line_and_exit_2(argument_paths, command, fragment)


@pytest.mark.parametrize("args", [["train"], ["train", "{data}", "--steps", "many"], ["infer", "{onnx}"],
                                  ["export", "{ckpt}", "--opset", "x"], ["parity", "{onnx}", "--data", "{data}"]])
def test_parser_errors_exit_2_without_traceback(argument_paths, args):
    """The app called as a library (typer's runner): its own usage message. The script says one line (below)."""
    result = invoke(*[a.format(**argument_paths) for a in args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Usage: " in result.output


def test_help_at_80_columns_names_every_option_and_command_in_full():
    """`--help` in an 80-column terminal: every option of every command is spelled in full (rich's table had cut
    `--int8-min-agreement` and `--allow-other-reference` to fit), a help text's "[default: …]" survives (rich read
    it as markup), every command's summary is whole in `edgenode --help`, and no line is wider than the terminal."""
    import typer

    group = typer.main.get_command(app)
    top = CliRunner().invoke(app, ["--help"], terminal_width=80)
    assert top.exit_code == 0
    flat = " ".join(top.output.split())
    for name, command in group.commands.items():
        assert f"{name} {' '.join(command.help.split())}" in flat, name
        result = CliRunner().invoke(app, [name, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        assert max(map(len, result.output.splitlines())) <= 80, name
        words = set(result.output.replace(",", " ").split())
        for param in command.params:
            for option in [*param.opts, *param.secondary_opts]:
                if option.startswith("-"):
                    assert option in words, f"{name} {option}"
    assert "[default: 1e-6]" in CliRunner().invoke(app, ["parity", "--help"], terminal_width=80).output


@pytest.mark.parametrize(("args", "line"), [
    (["train", "--bogus"], "error: No such option: --bogus"),
    (["train"], "error: Missing argument 'data'. (see `edgenode train --help`)"),
    (["train", "d", "--epochs", "abc"], "error: Invalid value for '--epochs': "),
    (["nosuch"], "error: No such command 'nosuch'. (see `edgenode --help`)"),
])
def test_the_script_says_parser_errors_in_one_line(args, line):
    result = subprocess.run(edgenode_cmd(*args), env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(line), result.stderr
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr


@pytest.mark.parametrize("args", [["infer", "{onnx}", "{image}"], ["export", "{ckpt}", "--out", "{new}", "--steps", "1",
                                                                   "--no-check-ode", "--precision", "fp32"]])
def test_without_onnxruntime_a_command_says_how_to_install_it(argument_paths, monkeypatch, args):
    """ONNX Runtime is an extra (its CPU and GPU builds cannot be installed together): its absence is one line."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    try:
        result = invoke(*[a.format(**argument_paths) for a in args])
        assert_one_line_error(result, 1, "ONNX Runtime is not installed (pip install onnxruntime, or onnxruntime-gpu on an x86_64")
    finally:
        shutil.rmtree(argument_paths["new"], ignore_errors=True)


def test_split_and_teacher_replace_only_a_file_of_their_own_kind(synthetic_root, tmp_path):
    """An existing --out of another kind (a checkpoint, a sidecar, another .npz) is refused and left as it was;
    an earlier output of the same command, or an empty file, is replaced: re-running is normal."""
    from edgenode.cli.common import output_file
    from edgenode.cli.teacher import is_teacher_file
    from edgenode.teacher import TeacherEmbeddings, save_teacher

    others = {"ckpt.pt": "a training checkpoint", "model.onnx.json": "a JSON file", "targets.npz": "an .npz archive"}
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "ckpt.pt")
    (tmp_path / "model.onnx.json").write_text('{"format": "edgenode-artifact/1"}\n')
    np.savez(tmp_path / "targets.npz", files=np.array(["a.png"]), log_probs=np.zeros((1, 3)))
    for name, described in others.items():
        before = (tmp_path / name).read_bytes()
        for command, kind in (("split", "a split manifest"), ("teacher", "teacher descriptors")):
            result = invoke(command, synthetic_root, "--out", tmp_path / name)
            line = assert_one_line_error(result, 2, f"--out {tmp_path / name}: already exists and is {described}, not {kind}")
            assert f"(pass another --out, or delete {tmp_path / name} to replace it)" in line
        assert (tmp_path / name).read_bytes() == before

    manifest = tmp_path / "manifest.json"
    manifest.touch()
    split = ["split", synthetic_root, "--out", manifest, "--per-class", 24, "--train", 16, "--val", 4, "--test", 4]
    for _ in range(2):  # over an empty file, then over its own manifest
        result = invoke(*split)
        assert result.exit_code == 0, result.output
        assert Manifest.load(manifest).classes
    teacher = save_teacher(tmp_path / "teacher.npz", TeacherEmbeddings(
        files=np.array(["a.png"]), embedding=np.ones((1, 4), np.float32), face_detected=np.array([True]), provenance={}))
    assert output_file(teacher, kind="teacher descriptors", is_kind=is_teacher_file) == teacher


@pytest.mark.parametrize("make", ["folder", "file under it"])
def test_a_file_where_a_late_write_needs_a_folder_is_one_line_naming_it(tmp_path, make):
    """A write that meets a file where a folder must be, past the up-front checks, gives the same line: the file
    in the way named (not "File exists" / "<path>: Not a directory"), exit 2."""
    import typer

    from edgenode.artifacts import atomic_write_bytes
    from edgenode.cli.common import user_errors

    blocker = tmp_path / "afile"
    blocker.write_text("a plain file\n")
    late = typer.Typer()

    @late.command()
    @user_errors
    def write(target: Path) -> None:
        if make == "folder":
            target.mkdir(parents=True, exist_ok=True)  # FileExistsError naming the file itself
        else:
            atomic_write_bytes(target / "sub" / "report.json", b"{}")  # NotADirectoryError naming afile/sub

    result = CliRunner().invoke(late, [str(blocker)])
    assert_one_line_error(result, 2, f"error: {blocker} is a file, not a folder (pass a folder path)")
    assert blocker.read_text() == "a plain file\n"


def test_a_command_shows_no_pillow_bomb_warning_for_a_picture_it_reads_smaller_or_refuses(tmp_path, monkeypatch):
    """Pillow warns, with two lines of its source, about a picture over its limit (a 108-MP phone JPEG); edgenode's
    decoder reads such a picture at reduced size or refuses it with its own reason, so a command shows no such
    warning. Pillow's limit is lowered here to make a 16 x 16 picture trigger it."""
    import typer
    from PIL import Image

    from edgenode.cli.common import user_errors
    from edgenode.data import load_rgb

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (90, 120, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 256 pixels: a warning, not yet an error
    with pytest.warns(Image.DecompressionBombWarning):  # outside a command: Pillow's warning, as Pillow gives it
        load_rgb(path)

    app = typer.Typer()

    @app.command()
    @user_errors
    def read(picture: Path) -> None:
        print(load_rgb(picture).size)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, [str(path)])
    assert result.exit_code == 0 and result.stdout.strip() == "(16, 16)", result.output
    assert not [w for w in shown if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBomb" not in result.output


def test_worker_processes_show_no_pillow_bomb_warning_either(tmp_path, capfd):
    """`align` and `teacher` decode in spawned processes, which do not inherit a command's warning filters."""
    from PIL import Image

    from edgenode.process_pool import process_map
    from helpers import no_setup, read_under_a_tiny_pillow_limit

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (90, 120, 30)).save(path)
    sizes = process_map(read_under_a_tiny_pillow_limit, [str(path)] * 2, initializer=no_setup, initargs=(),
                        workers=2, description="reading", progress=False, chunksize=1)
    assert sizes == [(16, 16), (16, 16)]
    assert "DecompressionBomb" not in capfd.readouterr().err


@pytest.mark.parametrize("during", ["start-up", "items"])
def test_ctrl_c_stops_worker_processes_at_once_without_their_tracebacks(tmp_path, during):
    """Ctrl-C reaches a terminal's whole process group. Workers start with it ignored: only the main process stops,
    and it ends the pool at once, instead of each worker printing its traceback (a worker interrupted in its
    initializer did) or the pool working through, or hanging on, the queued items. The items take 30 s each: the
    command must end well before the two running ones would (waiting for them is what shutting the pool down
    politely does)."""
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(f"""
        import functools
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from edgenode.process_pool import process_map
        from helpers import mark_then_wait, mark_then_wait_in_a_new_file, no_setup

        if __name__ == "__main__":
            started, items = sys.argv[1:]
            setup = (mark_then_wait_in_a_new_file, (started,)) if {during == "start-up"} else (no_setup, ())
            try:
                process_map(functools.partial(mark_then_wait, seconds=30.0), [f"{{items}}/item-{{i}}" for i in range(40)], initializer=setup[0],
                            initargs=setup[1], workers=2, description="waiting", progress=False, chunksize=1)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)
            sys.exit(0)
    """))
    started, items = tmp_path / "started", tmp_path / "items"
    started.mkdir()
    items.mkdir()
    watched = started if during == "start-up" else items
    process = subprocess.Popen([sys.executable, str(script), str(started), str(items)], stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=subprocess_env())
    deadline = time.monotonic() + 60
    while len(list(watched.iterdir())) < 2 and time.monotonic() < deadline:  # both workers are there
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    interrupted = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - interrupted
        time.sleep(0.5)
        running = _running_in_group(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a worker left behind fails the test, not the suite
    assert process.returncode == 130 and stderr.strip() == "interrupted", stderr
    assert len(list(items.iterdir())) < 40  # the queued items were cancelled, not worked through
    assert took < 15, f"the command waited {took:.0f} s for its running items"
    assert running == []  # no worker outlives the command


def test_ctrl_c_while_the_command_starts_is_one_line_too(tmp_path):
    """The commands import torch (about 2 s here): a Ctrl-C then gave a traceback through torch's import, or an abort
    inside its C++ start-up. Sent once libtorch is loaded (0.2-0.3 s in; the import goes on for 1.5 s more), to a
    command that runs for minutes after it, so that it lands in the import or, on a fast machine, in the command:
    the same one line either way."""
    process = subprocess.Popen(edgenode_cmd("demo", "--out", tmp_path / "demo", "--no-progress"), stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, start_new_session=True, env=subprocess_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip() == "error: interrupted (what was written stays whole; run it again to continue)", stderr


def test_the_interrupt_line_says_how_to_continue_where_there_is_a_way():
    from edgenode.errors import interrupted_line

    assert interrupted_line(["train", "data", "--out", "run"]).endswith("; the same command with --resume continues the run)")
    assert interrupted_line(["--no-progress", "demo"]).endswith("; run it again to continue)")
    assert interrupted_line(["align", "data", "--out", "chips"]).endswith("; run it again to continue)")
    assert interrupted_line(["infer", "m.onnx", "photos"]) == "error: interrupted (what was written stays whole)"


def _running_in_group(group: int) -> list[int]:
    """Processes of a process group that still run (not zombies: an orphan's exit status waits for init to read
    it, and the init of a container may never do so). Linux's /proc."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            if int(pgrp) == group and state != "Z":
                running.append(int(stat.parent.name))
    return running


def test_a_write_that_fails_names_the_file_asked_for_not_its_temporary(tmp_path, monkeypatch):
    import errno
    import tempfile

    from edgenode.artifacts import atomic_write_bytes

    def read_only(prefix, suffix, dir):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(OSError) as exc:
            atomic_write_bytes(tmp_path / "model.onnx", b"x")
    assert exc.value.filename == str(tmp_path / "model.onnx") and ".tmp" not in str(exc.value)

    def refused(source, target):  # the rename: os.replace names both files
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(source), os.fspath(target))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError) as exc:
        atomic_write_bytes(tmp_path / "model.onnx", b"x")
    assert str(exc.value) == f"[Errno {errno.EACCES}] Permission denied: '{tmp_path / 'model.onnx'}'"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # and the temporary is gone


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(synthetic_root, trained_run, tmp_path, monkeypatch):
    """It failed at the first write, after the work (minutes, for an export), naming a temporary file."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    def access(path, mode):  # a read-only folder (chmod would not stop root, who runs CI)
        return not (Path(path) == locked and mode & os.W_OK) and real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    result = CliRunner().invoke(app, ["split", str(synthetic_root), "--out", str(locked / "new" / "manifest.json")])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: --out {locked / 'new' / 'manifest.json'}: cannot write in {locked} (permission "
                                     "denied, or a read-only file system) (pass an --out you can write to)")
    result = CliRunner().invoke(app, ["export", str(trained_run.best_checkpoint), "--out", str(locked / "export")])
    assert result.exit_code == 1 and f"cannot write in {locked}" in result.stderr, result.output
    # a folder that access() calls writable (root may write anywhere) but that takes no files: the probe finds it
    monkeypatch.setattr(os, "access", real_access)
    result = CliRunner().invoke(app, ["train", str(synthetic_root), "--out", "/proc/edgenode-run"])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: --out /proc/edgenode-run: cannot write in /proc (No such file or directory) (pass an --out you can write to)"), result.output


def test_an_error_that_wraps_a_ctrl_c_is_raised_as_the_ctrl_c():
    """torch.onnx and torch.compile catch KeyboardInterrupt and raise their own errors, with it as the cause or the
    context, one or more levels down."""
    from edgenode.errors import reraise_interrupt

    def wrapped(how: str) -> Exception:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as interrupt:
                if how == "cause":
                    raise RuntimeError("export failed") from interrupt
                raise AttributeError("'NoneType' object has no attribute 'graph'")  # raised while handling it
        except Exception as inner:  # noqa: BLE001
            outer = RuntimeError("torch.onnx: the exporter failed")
            outer.__cause__ = inner
            return outer

    for how in ("cause", "context"):
        with pytest.raises(KeyboardInterrupt):
            reraise_interrupt(wrapped(how))
    plain = ValueError("an exporter bug")
    plain.__context__ = TypeError("unrelated")
    assert reraise_interrupt(plain) is None  # any other error: the caller goes on to its fallback


def test_exit_codes_are_what_the_errors_say():
    assert ArtifactPathError("x").exit_code == 2 and isinstance(ArtifactPathError("x"), ArtifactError)
    assert EdgenodeError("x").exit_code == 1 and NumericError("x").exit_code == 1


# --- concurrency ------------------------------------------------------------------------------------------------


def test_two_infer_processes_read_one_artifact_at_once(corpus, corpus_export):
    cmd = edgenode_cmd("infer", corpus_export, corpus["sources"], "--json", "--top-k", 3)
    procs = [subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0].splitlines()) == len(os.listdir(corpus["sources"]))


def test_export_replacing_files_while_another_process_reads_them(corpus_run, corpus_export, tmp_path, one_thread):
    """Re-export (other weights, same file names) into a folder while this process keeps loading from it: every
    load gives the complete old or the complete new model, or a one-line sha256 refusal in the instant between
    an artifact and its sidecar being replaced; never a parse error, never a mix."""
    folder = tmp_path / "export"
    shutil.copytree(corpus_export.parent, folder)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(corpus_run[1] / "manifest.json", other / "manifest.json")
    ckpt = load_checkpoint(corpus_run[1] / "best.pt")
    ckpt.state_dict = {k: v * 1.5 if v.is_floating_point() and v.ndim > 1 else v for k, v in ckpt.state_dict.items()}
    save_checkpoint(other / "best.pt", ckpt)

    x = np.random.default_rng(0).standard_normal((2, 3, CORPUS_SIZE, CORPUS_SIZE)).astype(np.float32)
    names = sorted(p.name for p in find_artifacts(folder))

    def logits_of(path: Path) -> np.ndarray:
        with load_predictor(path, provider="cpu") as predictor:
            return predictor.predict_logits(x)

    old = {name: logits_of(folder / name) for name in names}
    proc = subprocess.Popen(edgenode_cmd("export", other / "best.pt", "--out", folder, "--precision", "fp32,int8",
                                         "--int8-target", "ort", "--opset", 17, "--no-check-ode"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, refused = [], []
    while proc.poll() is None:
        for path in find_artifacts(folder):
            assert not path.name.startswith(".")
            try:
                seen.append((path.name, logits_of(path)))
            except ArtifactError as exc:
                assert "does not match its sidecar" in str(exc), str(exc)
                refused.append(str(exc))
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    new = {name: logits_of(folder / name) for name in names}
    assert all(not np.array_equal(old[name], new[name]) for name in names)
    assert seen
    for name, logits in seen:
        assert np.array_equal(logits, old[name]) or np.array_equal(logits, new[name]), name


def test_a_foreign_error_enters_ours_as_its_first_line():
    from edgenode.errors import first_line

    assert first_line(RuntimeError("parse failed\n  at node 3\n  ...")) == "parse failed"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(OSError("a" * 20 + "b" * 30), limit=10) == "aaaa…bbbbb"
    ort = ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:202 onnxruntime::Model::Model("
           + "const onnxruntime::PathString&, " * 8 + ") Unsupported model IR version: 14, max supported IR version: 11")
    cut = first_line(RuntimeError(ort))
    assert len(cut) == 200 and cut.startswith("[ONNXRuntimeError] : 1 : FAIL") and cut.endswith("max supported IR version: 11")


def test_teacher_views_refuses_an_unaligned_folder_before_decoding_the_pool(argument_paths, monkeypatch, tmp_path):
    """The views are described as aligned chips: a plain data folder is refused in seconds, before `--unlabeled`
    decodes and hashes the whole pool (which it did first), and without writing the bank."""
    import edgenode.data.pool

    monkeypatch.setattr(edgenode.data.pool, "load_unlabeled_pool", lambda *a, **k: pytest.fail("the pool was decoded first"))
    result = invoke("teacher-views", argument_paths["data"], "--manifest", argument_paths["manifest"], "--unlabeled",
                    "--out", tmp_path / "bank.npz")
    assert_one_line_error(result, 1, f"{argument_paths['data']} is not an aligned copy")
    assert not (tmp_path / "bank.npz").exists()


def test_a_flipped_byte_in_a_checkpoints_weights_is_refused(argument_paths, tmp_path):
    """torch.load does not check the zip archive's CRCs: one flipped byte in the weights loaded as other weights."""
    from edgenode.checkpoint import load_checkpoint
    from edgenode.errors import ArtifactError

    data = bytearray(Path(argument_paths["ckpt"]).read_bytes())
    weights = load_checkpoint(argument_paths["ckpt"]).state_dict
    largest = max(weights.values(), key=lambda t: t.numel()).numpy().tobytes()
    data[bytes(data).index(largest) + len(largest) // 2] ^= 0x10  # in the middle of the largest tensor
    damaged = tmp_path / "best.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"best\.pt: damaged checkpoint: its record data/\d+ fails the zip archive's CRC"):
        load_checkpoint(damaged)
    result = invoke("infer", damaged, argument_paths["image"])
    assert_one_line_error(result, 1, "fails the zip archive's CRC check (the bytes changed on disk or in a copy")


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_old_file_stays(trained_run, tmp_path, monkeypatch):
    """torch.save says "disk full" as a RuntimeError from its zip writer, which no command caught: a traceback."""
    path = tmp_path / "last.pt"
    shutil.copy(trained_run.best_checkpoint, path)
    before = path.read_bytes()
    ckpt = load_checkpoint(path)

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nPytorchStreamWriter failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ArtifactError) as info:
        save_checkpoint(path, ckpt)
    assert str(info.value).startswith(f"{path}: could not be written ([enforce fail") and "free disk space" in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 1
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_path_that_looks_like_markup_is_printed_as_it_is(synthetic_root, tmp_path):
    """`split --out 'm[/b].json'` wrote the manifest, then died printing its name: rich read `[/b]` as markup."""
    out = tmp_path / "m[/b].json"
    result = invoke("split", synthetic_root, "--out", out, "--per-class", 24, "--train", 16, "--val", 4, "--test", 4)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert out.is_file() and f"wrote {out}:" in " ".join(result.output.split())


def test_a_float16_value_above_2_to_the_15_is_saturated():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to_half"),
             helper.make_node("Mul", ["h", "k"], ["big"], name="grow"),
             helper.make_node("Cast", ["big"], ["logits"], to=TensorProto.FLOAT, name="to_float")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
                              [numpy_helper.from_array(np.array(400.0, np.float16), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scan = numerics.scan_numerics(model, np.full((2, 3), 100.0, np.float32))  # 40000: finite, above 2**15
    assert [(p.node, p.kind) for p in scan.problems] == [("grow", "saturated")]
    assert not numerics.scan_numerics(model, np.full((2, 3), 50.0, np.float32)).problems  # 20000: fine


def test_a_quantizer_clipping_a_third_of_its_input_saturates():
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, size=(200, 3)).astype(np.float32)
    model = _scaled_cosine_head(0.005)  # range ±0.64 of cosines spread over ±0.9: about 30 % clipped
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with pytest.raises(NumericError, match=r"cos_quant.*clips [23]\d\.\d%"):
        numerics.check_logits(model, logits, x, "test model", "200 images", precision="int8")


def test_an_abort_inside_a_command_exits_130_with_the_interrupt_line(tmp_path, monkeypatch, capsys):
    """click raises Abort for a Ctrl-C it catches itself (a prompt, some typer versions): the same line and exit code
    as any other interrupt, not click's exit 1."""
    import typer

    import edgenode.data
    from edgenode.cli.app import main

    def abort(*args, **kwargs):
        raise typer.Abort()

    monkeypatch.setattr(edgenode.data, "build_manifest", abort)
    with pytest.raises(SystemExit) as exited:
        main(["split", str(tmp_path), "--out", str(tmp_path / "m.json")])
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted (what was written stays whole)"


def test_edgenode_alone_prints_its_help_laid_out_not_folded_into_an_error_line(capsys):
    from edgenode.cli.app import main

    with pytest.raises(SystemExit) as exited:
        main([])
    said = capsys.readouterr().err
    assert exited.value.code == 2 and said.startswith("Usage: edgenode [OPTIONS] COMMAND [ARGS]...\n")
    assert "error:" not in said and "\n  train " in said  # one command a line, as --help lays them out


def test_a_handful_of_items_runs_without_a_worker_pool(monkeypatch):
    """A worker's start-up costs about a second: under 64 items there is one process, and one more per 32 after."""
    from edgenode.process_pool import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [default_workers(n) for n in (0, 1, 31, 63, 64, 95, 96, 10_000)] == [1, 1, 1, 1, 2, 2, 3, 16]


def test_written_files_are_readable_by_everyone_not_only_their_owner(tmp_path):
    """The temporary a write goes through is owner-only (mkstemp); the file it becomes is a model to ship, copy to
    a device or serve from another account: rw-r--r-- under the usual umask."""
    import stat

    from edgenode.artifacts import atomic_write_bytes

    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "best.pt", b"weights")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "best.pt").stat().st_mode) == 0o644


def test_a_write_syncs_the_file_then_the_folder_that_names_it(tmp_path, monkeypatch):
    """Crash safety up to power loss: the data is on disk before the rename, and the rename is on disk after it."""
    from edgenode.artifacts import atomic_write_bytes

    opened, synced = {}, []
    real_open, real_fsync = os.open, os.fsync

    def recording_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = Path(path)
        return fd

    def recording_fsync(fd):
        synced.append(opened.get(fd) or Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write_bytes(tmp_path / "best.pt", b"weights")
    assert (tmp_path / "best.pt").read_bytes() == b"weights"
    assert len(synced) == 2 and synced[0].name.startswith(".best.pt.") and synced[1] == tmp_path
