"""`edgenode infer`: folders and files, bad files that do not stop the batch, JSON lines, providers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgenode.cli import app
from edgenode.errors import UsageError



@pytest.fixture(scope="module")
def fp32_onnx(shared_exports) -> Path:
    return shared_exports["fp32"]


@pytest.fixture()
def photo_folder(synthetic_root, tmp_path) -> Path:
    """Two identities' pictures in nested folders, plus a zero-byte file and a text file named .jpg."""
    folder = tmp_path / "photos"
    for i, src in enumerate(sorted(synthetic_root.glob("images/*/*_000.png"))[:4]):
        dst = folder / ("a" if i % 2 else "b/deeper") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (folder / "a" / "empty.jpg").write_bytes(b"")
    (folder / "b" / "readme.jpg").write_text("this is not a picture\n")
    (folder / "a" / "notes.txt").write_text("ignored: not an image extension\n")
    return folder


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_bad_files_do_not_stop_the_batch_and_exit_1(fp32_onnx, photo_folder):
    result = invoke("infer", fp32_onnx, photo_folder, "--batch-size", "2", "--json")
    assert result.exit_code == 1, result.output
    records = json_lines(result.stdout)
    assert len(records) == 6  # 4 pictures + 2 bad files; notes.txt is not picked up from a folder
    good = [r for r in records if r["ok"]]
    bad = {Path(r["path"]).name: r["error"] for r in records if not r["ok"]}
    assert len(good) == 4 and bad == {"empty.jpg": "empty file", "readme.jpg": "not an image (format not recognised)"}
    # the good pictures get what the Python API gives them, batch of 2 or not
    from edgenode.runtime import load_predictor

    expected = load_predictor(fp32_onnx).predict([r["path"] for r in good], k=1)
    assert [r["label"] for r in good] == [p.top_k[0][0] for p in expected]
    assert [r["confidence"] for r in good] == pytest.approx([p.top_k[0][1] for p in expected], abs=1e-5)
    classes = load_predictor(fp32_onnx).metadata.classes
    assert all(classes[r["index"]] == r["label"] for r in good)  # the --json index names the label
    # each failure is one line on stderr; stdout carries JSON only
    assert "empty.jpg: empty file" in result.stderr and "readme.jpg" in result.stderr
    assert "2 failed" in result.stderr and "onnxruntime" in result.stderr and "provider cpu" in result.stderr


def test_all_good_exits_0_with_top_k_and_human_output(fp32_onnx, photo_folder, synthetic_root):
    pictures = sorted(photo_folder.rglob("*.png"))
    result = invoke("infer", fp32_onnx, *pictures, "--top-k", "3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    for line, picture in zip(lines, pictures):
        path, ranked = line.split("\t")
        assert path == str(picture) and ranked.count("Synthetic Person") == 3
    as_json = json_lines(invoke("infer", fp32_onnx, pictures[0], "-k", "2", "--json").stdout)
    assert len(as_json) == 1 and len(as_json[0]["top_k"]) == 2
    probs = [entry["probability"] for entry in as_json[0]["top_k"]]
    assert probs == sorted(probs, reverse=True) and as_json[0]["confidence"] == probs[0]


def test_checkpoint_and_onnx_agree_through_the_cli(fp32_onnx, trained_run, photo_folder):
    from_onnx = json_lines(invoke("infer", fp32_onnx, photo_folder / "a", "--json").stdout)
    from_ckpt = json_lines(invoke("infer", trained_run.best_checkpoint, photo_folder / "a", "--json").stdout)
    assert [r["path"] for r in from_onnx] == [r["path"] for r in from_ckpt]
    good = [(a, b) for a, b in zip(from_onnx, from_ckpt) if a["ok"]]
    assert good and all(a["label"] == b["label"] for a, b in good)


def test_provider_errors_are_one_line(fp32_onnx, photo_folder, trained_run):
    import onnxruntime

    picture = next(photo_folder.rglob("*.png"))
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        result = invoke("infer", fp32_onnx, picture, "--provider", "cuda")
        assert result.exit_code == 1
        assert "provider 'cuda'" in result.stderr and "onnxruntime-gpu" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = invoke("infer", fp32_onnx, picture, "--provider", "gpu")
    assert result.exit_code == 2 and "unknown provider 'gpu'" in result.stderr
    result = invoke("infer", trained_run.best_checkpoint, picture, "--provider", "tensorrt")
    assert result.exit_code == 2 and "does not apply to a training checkpoint" in result.stderr


def test_wrong_artifact_and_no_images_are_refused(fp32_onnx, tmp_path, photo_folder):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model\n")
    result = invoke("infer", fake, photo_folder)
    assert result.exit_code == 1 and "is a text file, not a model" in result.stderr  # named like one: damaged
    report = tmp_path / "export_report.md"  # a report from the same folder, passed by mistake: the command line is wrong
    report.write_text("# Export report\n")
    result = invoke("infer", report, photo_folder)
    assert result.exit_code == 2 and "export_report.md: is a text file, not a model" in result.stderr
    fake.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 4536689\n")
    result = invoke("infer", fake, photo_folder)
    assert result.exit_code == 1 and "model.onnx: is a Git LFS pointer, not the model it stands for (fetch the file: git lfs pull)" in result.stderr
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = invoke("infer", fp32_onnx, empty)
    assert result.exit_code == 2 and "no image files found" in result.stderr
    from PIL import Image

    Image.open(next(photo_folder.rglob("*.png"))).save(empty / "scan.bmp")
    (empty / "notes.txt").write_text("not a picture")
    result = invoke("infer", fp32_onnx, empty)  # a picture of another format: said, not silently absent
    assert result.exit_code == 2 and "no image files found" in result.stderr and "e.g. scan.bmp" in result.stderr


def test_infer_says_what_a_folder_search_left_out_and_when_top_k_exceeds_the_classes(fp32_onnx, synthetic_root, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed" / "deeper"
    folder.mkdir(parents=True)
    pictures = sorted(synthetic_root.glob("images/*/*_000.png"))[:2]
    for src in pictures:
        shutil.copy(src, folder / src.name)
    Image.open(pictures[0]).save(folder / "scan.bmp")
    (folder / "notes.txt").write_text("not a picture, not mentioned")
    folder = folder.parent
    result = invoke("infer", fp32_onnx, folder, "--top-k", 99)
    assert result.exit_code == 0, result.output
    assert f"note: 1 picture(s) in the folders are not .jpg, .jpeg, .png or .webp and were left out (e.g. {folder / 'deeper' / 'scan.bmp'})" in result.stderr
    assert "notes.txt" not in result.output
    n_classes = len(result.stdout.splitlines()[0].split("\t")[1].split(", "))
    assert f"note: --top-k 99: the model knows {n_classes} classes; each line ranks all of them" in result.stderr
    result = invoke("infer", fp32_onnx, folder / "deeper" / "scan.bmp")  # named, it is read
    assert result.exit_code == 0 and "1/1 image(s) classified" in result.stderr, result.output


def test_pre_aligned_for_a_model_of_plain_crops_is_refused_not_ignored(fp32_onnx, photo_folder):
    picture = next(photo_folder.rglob("*.png"))
    result = invoke("infer", fp32_onnx, picture, "--pre-aligned")
    (line,) = result.stderr.strip().splitlines()  # the error alone: no banner saying the model runs first
    assert result.exit_code == 2 and "Traceback" not in result.output and not result.stdout.strip(), result.output
    assert line.startswith(f"error: --pre-aligned: {fp32_onnx} was trained on plain face crops") and "drop --pre-aligned" in line
    from edgenode.runtime import load_predictor

    with load_predictor(fp32_onnx) as predictor, pytest.raises(UsageError, match="--pre-aligned: .* plain face crops"):
        predictor.predict([picture], pre_aligned=True)  # the Python API refuses it too


def test_a_name_with_a_line_break_or_tab_stays_one_line_of_two_fields(fp32_onnx, photo_folder, tmp_path):
    picture = next(photo_folder.rglob("*.png"))
    odd = tmp_path / "two\nlines\tand a tab.png"
    shutil.copy(picture, odd)
    result = invoke("infer", fp32_onnx, odd, picture)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 1 for line in lines)
    assert json.loads(lines[0].split("\t")[0]) == str(odd) and lines[1].startswith(f"{picture}\t")
