"""`edgenode demo`, the README's first command, runs the whole path end to end (tiny settings)."""

from typer.testing import CliRunner

from edgenode.cli import app


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--classes", "4", "--per-class", "16", "--epochs", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "train" / "best.pt").is_file() and (out / "train" / "curves.png").is_file()
    assert sorted(p.name for p in (out / "export").glob("*.onnx"))[0].startswith("model-rk4x")
    assert len(list((out / "export").glob("*.onnx"))) == 4  # fp32, fp16, int8 for ORT and for TensorRT
    assert (out / "parity" / "parity.md").is_file()
    assert "Passed:" in result.output and "done." in result.output

    again = CliRunner().invoke(app, args)  # a second run resumes instead of starting over
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output
