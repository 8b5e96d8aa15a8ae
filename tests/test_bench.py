"""`edgenode bench` on tiny artifacts: a well-formed table/JSON/Markdown/PNG, the right rows, no timing thresholds.

Repeats, warm-up and the peak kernels are kept tiny so the module takes seconds beyond the shared fixtures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgenode.bench import BenchConfig, run_bench
from edgenode.bench.api import parse_int_list, parse_providers
from edgenode.bench.flops import config_flops, onnx_graph_flops
from edgenode.bench.gpu import UnrolledForward
from edgenode.bench.memory import MemoryUsage, PeakMemory
from edgenode.bench.peak import Peak, PeakConfig, PeakMeasurement, conv_chain_onnx, matmul_onnx
from edgenode.bench.timing import measure, summarize
from edgenode.checkpoint import load_checkpoint
from edgenode.cli.app import app
from edgenode.errors import ArtifactError, UsageError
from edgenode.ode.solvers import SolverConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


TINY = dict(batch_sizes=(1, 4), threads=1, warmup=1, repeats=2, peak_matmul_size=64, peak_depth=1, peak_warmup=0, peak_repeats=1,
            quiet=True)


@pytest.fixture(scope="module")
def exports(shared_exports) -> dict[str, Path]:
    return shared_exports


@pytest.fixture(scope="module")
def cli_report(exports, trained_run, synthetic_root, tmp_path_factory):
    """One full CLI run: an export folder, --data, a steps sweep, --json; (result, JSON on stdout, out folder)."""
    out = tmp_path_factory.mktemp("bench-cli")
    args = ["bench", str(exports["fp32"].parent), "--reference", str(trained_run.best_checkpoint), "--data", str(synthetic_root),
            "--batch-sizes", "1,4", "--threads", "1", "--repeats", "2", "--warmup", "1", "--sweep-steps", "1,2", "--opset", "17", "--peak-matmul-size", "64",
            "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result, json.loads(result.stdout), out


def test_cli_writes_table_json_markdown_and_plots(cli_report, exports, trained_run):
    result, report, out = cli_report
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png", "steps_sweep.png"]
    assert json.loads((out / "bench.json").read_text()) == report
    assert report["format"] == "edgenode-bench/1" and report["batch_sizes"] == [1, 4]
    assert report["latency_batch"] == 1 and report["throughput_batch"] == 4
    # the terminal tables name every row, and the peak and its method
    for name in ("best.pt (baseline)", *[p.name for p in exports.values()], "rk4×1 onnx fp32 (sweep)"):
        assert name in result.stderr
    assert "peak cpu/fp32" in result.stderr and "GFLOP/s" in result.stderr
    # the Markdown holds the same table, one line per row, and says what FLOPs and memory are
    md = (out / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "FLOPs" not in line and "Part" not in line]
    assert len(table) == 1 + len(report["rows"]) + 4  # header + rows + the 4-line FLOP table
    assert "2 × multiply-accumulates + bias adds" in md and "VmHWM" in md
    load = report["machine"]["load_average_1min_at_start"]  # always given, busy or not: times depend on it
    assert load is None or f"1-minute load average {load} at the start" in md


def test_rows_baseline_artifacts_and_sweep(cli_report, exports, trained_run):
    _, report, _ = cli_report
    rows = report["rows"]
    groups = [r["group"] for r in rows]
    assert groups[0] == "baseline" and groups.count("baseline") == 1
    assert [r["name"] for r in rows if r["group"] == "artifact"] == sorted(p.name for p in exports.values())
    assert [r["name"] for r in rows if r["group"] == "sweep"] == [
        "rk4×1 onnx fp32 (sweep)", "rk4×1 torch fp32 (sweep)", "rk4×2 onnx fp32 (sweep)", "rk4×2 torch fp32 (sweep)"]
    assert "gpu" not in groups  # no CUDA here: the CPU path never builds GPU rows
    assert any("no CUDA device" in n for n in report["notes"])

    base = rows[0]
    assert base["solver"].startswith("dopri5") and base["steps"] is None and base["kind"] == "checkpoint"
    assert base["nfe"]["1"] > 0 and base["nfe"]["4"] > 0  # measured model.nfe of the adaptive solve
    assert base["speedup_vs_baseline"] == {"1": 1.0, "4": 1.0}
    for row in rows:
        for b in ("1", "4"):
            t = row["timings"][b]
            assert t["n"] == 2 and 0 < t["min_ms"] <= t["p50_ms"] <= t["p95_ms"] <= t["max_ms"]
            assert t["throughput_ips"] == pytest.approx(int(b) / (t["p50_ms"] / 1000))
            assert row["speedup_vs_baseline"][b] == pytest.approx(base["timings"][b]["p50_ms"] / t["p50_ms"])
            assert row["fraction_of_peak"][b] > 0 and row["peak"] == "cpu/fp32"
        memory = row["memory"]
        assert memory["baseline_bytes"] > 0 and memory["method"] in ("VmHWM", "sampled RSS")
        assert memory["peak_delta_bytes"] == max(0, memory["peak_bytes"] - memory["baseline_bytes"])
        right = row["accuracy"]["accuracy"] * 24  # a count of images, as a fraction of the 24
        assert row["accuracy"]["n"] == 24 and right == pytest.approx(round(right))
        if row["group"] != "baseline":
            assert row["agreement"] * 24 == pytest.approx(round(row["agreement"] * 24))
    assert any(r["memory"]["peak_delta_bytes"] > 0 for r in rows)  # loading and running a model costs memory
    by_name = {r["name"]: r for r in rows}
    for steps in (1, 2):  # one graph, two runtimes: the same answers
        onnx_row, torch_row = by_name[f"rk4×{steps} onnx fp32 (sweep)"], by_name[f"rk4×{steps} torch fp32 (sweep)"]
        assert abs(onnx_row["accuracy"]["accuracy"] - torch_row["accuracy"]["accuracy"]) <= 1 / 24
        assert abs(onnx_row["agreement"] - torch_row["agreement"]) <= 1 / 24
    fp32 = by_name[exports["fp32"].name]
    assert fp32["precision"] == "fp32" and fp32["steps"] == 4 and fp32["nfe"] == {"1": 16, "4": 16}
    assert fp32["size_bytes"] == exports["fp32"].stat().st_size
    assert by_name[exports["int8"].name]["precision"] == "int8 (ort)"
    assert by_name["rk4×2 torch fp32 (sweep)"]["size_bytes"] is None


def test_flops_and_peak_in_the_report(cli_report, exports, trained_run):
    _, report, _ = cli_report
    ckpt = load_checkpoint(trained_run.best_checkpoint)
    counted = config_flops(ckpt.model_config, ckpt.input_spec.image_size)
    f = report["flops"]
    assert (f["stem"], f["f_eval"], f["head"], f["per_rk4_step"]) == (counted.stem, counted.f_eval, counted.head, 4 * counted.f_eval)
    by_name = {r["name"]: r for r in report["rows"]}
    # the exported graph's Conv/Gemm FLOPs are the module count for 16 evaluations
    assert onnx_graph_flops(exports["fp32"])["flops"] == counted.total(16) == by_name[exports["fp32"].name]["flops_per_image"]["4"]
    base = report["rows"][0]
    assert base["flops_per_image"]["1"] == counted.total(base["nfe"]["1"])
    peak = report["peak"]
    names = {m["name"] for m in peak["measurements"]}
    assert names == {"onnxruntime conv", "onnxruntime matmul", "torch conv", "torch matmul"}
    best = max(m["gflops"] for m in peak["measurements"])
    assert peak["peak"]["cpu/fp32"]["gflops"] == best
    assert all(m["threads"] == report["machine"]["threads"] for m in peak["measurements"])
    row = by_name[exports["fp32"].name]
    assert row["fraction_of_peak"]["4"] == pytest.approx(row["flops_per_image"]["4"] * row["timings"]["4"]["throughput_ips"] / (best * 1e9))


def test_without_data_no_accuracy_and_random_inputs(exports, trained_run, tmp_path):
    report = run_bench(BenchConfig(artifacts=(str(exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                                   peak=False, providers="cpu", **TINY))
    assert [r.group for r in report.rows] == ["baseline", "artifact"]
    assert all(r.accuracy is None and r.agreement is None for r in report.rows)
    assert all(r.fraction_of_peak[4] is None for r in report.rows)  # no peak measured, no fraction
    assert any("random pixels" in n for n in report.notes)
    assert report.files == []  # no --out: nothing written
    from edgenode.bench.report import write_report

    files = write_report(report, tmp_path)
    assert sorted(p.name for p in files) == ["bench.json", "bench.md"]  # no accuracy: no latency/accuracy plot


def test_an_interrupted_bench_keeps_the_rows_it_measured(exports, trained_run, tmp_path, monkeypatch):
    """Ctrl-C (or a kill, or a time limit) during the second artifact: bench.json and bench.md already hold the
    baseline and the first artifact, marked incomplete, and no figure of an earlier bench is left beside them."""
    import edgenode.bench.api as api

    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.png").write_bytes(b"an earlier bench's figure")
    measure = api.measure_row

    def interrupted(spec, session):
        if spec.name == exports["int8"].name:
            raise KeyboardInterrupt
        return measure(spec, session)

    monkeypatch.setattr(api, "measure_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench(BenchConfig(artifacts=(str(exports["fp32"]), str(exports["int8"])), reference=str(trained_run.best_checkpoint),
                              peak=False, providers="cpu", out=str(out), **TINY))
    saved = json.loads((out / "bench.json").read_text())
    assert [r["group"] for r in saved["rows"]] == ["baseline", "artifact"] and saved["rows"][1]["name"] == exports["fp32"].name
    assert saved["rows"][1]["speedup_vs_baseline"]["4"] > 0  # the derived columns are filled in as well
    assert any(n.startswith("incomplete: 2 rows measured") for n in saved["notes"])
    assert "incomplete: 2 rows measured" in (out / "bench.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md"]

    monkeypatch.setattr(api, "measure_row", measure)  # the same bench, finished: the whole report, no such note
    run_bench(BenchConfig(artifacts=(str(exports["fp32"]), str(exports["int8"])), reference=str(trained_run.best_checkpoint),
                          peak=False, providers="cpu", out=str(out), **TINY))
    saved = json.loads((out / "bench.json").read_text())
    assert len(saved["rows"]) == 3 and not any(n.startswith("incomplete") for n in saved["notes"])


def test_checkpoint_artifact_is_the_reference_when_none_is_given(trained_run, monkeypatch):
    """A checkpoint among the artifacts becomes the baseline; --baseline-solver overrides the solver it runs (the
    row's NFE is read off the solver's name, so the evaluations of every timed call are counted too)."""
    from edgenode.runtime.torch_runner import TorchRunner

    counted, original = [], TorchRunner._run

    def counting(self, x):
        logits = original(self, x)
        counted.append(self.nfe)
        return logits

    monkeypatch.setattr(TorchRunner, "_run", counting)
    report = run_bench(BenchConfig(artifacts=(str(trained_run.best_checkpoint),), peak=False,
                                   baseline_solver=SolverConfig("rk4", n_steps=1), **TINY))
    (row,) = report.rows
    assert row.group == "baseline" and row.solver == "rk4 × 1 step" and row.nfe == {1: 4, 4: 4}
    assert counted and set(counted) == {4}, counted  # the trained dopri5 would take more evaluations
    assert any("fixed-step solver" in n for n in report.notes)


def test_a_bench_of_checkpoints_needs_no_onnxruntime(trained_run, monkeypatch):
    """ONNX Runtime is an extra; without it a checkpoint is still timed, and only the CPU peak (timed with it) is
    missing, said in a note."""
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    report = run_bench(BenchConfig(artifacts=(str(trained_run.best_checkpoint),), peak=True, gpu=False, **TINY))
    (row,) = report.rows
    assert row.group == "baseline" and row.p50_ms(1) > 0
    assert report.peak is None and row.fraction_of_peak == {1: None, 4: None}
    assert any(n.startswith("no CPU peak, so no fraction of it: ONNX Runtime is not installed") for n in report.notes)


def test_a_peak_onnxruntime_cannot_load_costs_the_column_not_the_bench(trained_run, monkeypatch):
    """On an H200 session the bench ended before its first row: that machine's ONNX Runtime (1.30) refused the
    peak's in-memory graph. The rows are what a bench is for; the peak is one column of them."""
    from edgenode.bench import peak

    def refused(*args):
        raise ArtifactError("<in-memory ONNX>: onnxruntime cannot load it (Unsupported model IR version: 14)", "update it")

    monkeypatch.setattr(peak, "measure_cpu_peak", refused)
    report = run_bench(BenchConfig(artifacts=(str(trained_run.best_checkpoint),), peak=True, gpu=False, **TINY))
    (row,) = report.rows
    assert row.group == "baseline" and row.p50_ms(1) > 0
    assert report.peak is None and row.fraction_of_peak == {1: None, 4: None}
    assert "no CPU peak, so no fraction of it: <in-memory ONNX>: onnxruntime cannot load it (Unsupported model IR " \
           "version: 14)" in report.notes


def test_the_peak_graphs_are_written_at_an_ir_version_older_onnxruntimes_read():
    """``onnx.helper.make_model`` stamps the installed onnx's newest IR version (onnx 1.23: 14); opset 17 needs 8."""
    import onnx

    for model in (conv_chain_onnx(PeakConfig(batch=1, channels=4, size=4, depth=1)), matmul_onnx(8)):
        proto = onnx.load_from_string(model)
        assert proto.ir_version == 8 and [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
        onnx.checker.check_model(proto)


def _tf32_recorder(seen):
    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return x.flatten(1)

    return Recorder()


@pytest.fixture
def tf32_on():
    """TF32 allowed for both, as cuDNN's default allows it for convolutions; restored after."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("dtype, expected", [("fp32", (False, False)), ("fp16", (True, True)), ("bf16", (True, True))])
def test_a_gpu_row_named_fp32_computes_without_tf32(tf32_on, monkeypatch, dtype, expected):
    """An H200 bench's "fp32" rows ran cuDNN's default TF32 convolutions (its report's machine: tf32 cudnn True):
    another precision than the row's name. Checked on the flags the module runs under (no GPU here: the CUDA
    calls are stood in for)."""
    from types import SimpleNamespace

    from edgenode.bench import gpu

    seen = []
    runner = gpu.CudaTorchRunner.__new__(gpu.CudaTorchRunner)
    gpu.Runner.__init__(runner)
    event = SimpleNamespace(record=lambda: None, synchronize=lambda: None, elapsed_time=lambda other: 1.5)
    runner._torch, runner.dtype_name, runner.dtype, runner.compile_mode = torch, dtype, torch.float32, None
    runner.module = runner._fn = _tf32_recorder(seen)
    runner._start = runner._end = event
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    out = runner.infer(np.zeros((2, 3, 2, 2), np.float32))
    assert out.shape == (2, 12) and runner.last_inference_ms == 1.5
    assert seen == [expected]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)


def test_the_gpu_fp32_peak_is_measured_without_tf32(tf32_on, monkeypatch):
    """The peak a fp32 row is divided by is IEEE float32 too (TF32 would raise it and lower every fraction)."""
    from edgenode.bench import gpu, peak

    seen = []

    def on_cpu(make):
        return lambda *args, device=None, dtype=None: make(*args, dtype=dtype)

    def conv2d(h, w, b, padding):
        seen.append(("conv", h.dtype, torch.backends.cudnn.allow_tf32))
        return h

    def mm(a, b):
        seen.append(("mm", a.dtype, torch.backends.cuda.matmul.allow_tf32))
        return a

    monkeypatch.setattr(torch, "randn", on_cpu(torch.randn))
    monkeypatch.setattr(torch, "zeros", on_cpu(torch.zeros))
    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gpu, "cuda_timed", lambda fn: lambda: (fn(), 1.0)[1])
    out = peak.measure_cuda_peak(PeakConfig(batch=1, channels=2, size=2, depth=1, warmup=0, repeats=1), matmul_size=2)
    assert [(m.name, m.dtype) for m in out] == [(f"torch cuda {k}", d) for d in ("fp32", "fp16", "bf16") for k in ("conv", "matmul")]
    assert seen == [("conv", torch.float32, False), ("mm", torch.float32, False),
                    ("conv", torch.float16, True), ("mm", torch.float16, True),
                    ("conv", torch.bfloat16, True), ("mm", torch.bfloat16, True)]


def test_cpu_path_never_touches_cuda(exports, trained_run, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("CUDA touched on the CPU path")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("synchronize", "Event", "reset_peak_memory_stats", "max_memory_allocated", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, boom)
    report = run_bench(BenchConfig(artifacts=(str(exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                                   peak=True, **TINY))
    assert all(r.device == "cpu" and r.cuda_peak_bytes is None for r in report.rows)
    assert report.machine["cuda"] is False and "gpu" not in report.machine


def test_unrolled_forward_is_the_unrolled_model(trained_run):
    """The side-effect-free module compiled on GPUs computes what with_solver(rk4 × N) computes."""
    model = load_checkpoint(trained_run.best_checkpoint).build_model()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.with_solver(SolverConfig("rk4", n_steps=3)).eval()(x)
        got = UnrolledForward(model, "rk4", 3).eval()(x)
    assert torch.equal(got, expected)


def test_user_errors_are_one_line(trained_run, exports, synthetic_root, tmp_path):
    ckpt = str(trained_run.best_checkpoint)
    with pytest.raises(UsageError, match="nothing to bench"):
        BenchConfig()
    with pytest.raises(UsageError, match="no reference checkpoint"):
        run_bench(BenchConfig(artifacts=(str(exports["fp32"]),), peak=False, **TINY))
    with pytest.raises(ArtifactError, match="is an ONNX model, but --reference needs a training checkpoint"):
        run_bench(BenchConfig(reference=str(exports["fp32"]), peak=False, **TINY))
    with pytest.raises(UsageError, match="--batch-sizes 'x'"):
        BenchConfig(reference=ckpt, batch_sizes="1,x")
    with pytest.raises(UsageError, match="--sweep-steps '0'"):
        BenchConfig(reference=ckpt, sweep_steps="0,2")
    with pytest.raises(UsageError, match="--providers 'gpu'"):
        BenchConfig(reference=ckpt, providers="gpu")
    with pytest.raises(UsageError, match="--sweep-method 'dopri5'"):
        BenchConfig(reference=ckpt, sweep_method="dopri5")
    with pytest.raises(UsageError, match="--repeats 0"):
        BenchConfig(reference=ckpt, repeats=0)
    stray = tmp_path / "manifest.json"
    stray.write_text(Path(trained_run.run_dir / "manifest.json").read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ArtifactError, match="is not the split"):
        run_bench(BenchConfig(reference=ckpt, data=str(synthetic_root), manifest=str(stray), peak=False, **TINY))

    runner = CliRunner()
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 2 and "error: nothing to bench" in result.stderr
    result = runner.invoke(app, ["bench", "--reference", str(synthetic_root / "nope.pt")])
    assert result.exit_code == 2 and "nope.pt: file not found" in result.stderr  # a missing path is a bad argument
    assert "Traceback" not in result.output


def _copy_folder(exports, folder: Path) -> Path:
    """A private copy of the export folder's artifacts and sidecars (the shared one is read-only)."""
    import shutil

    folder.mkdir(parents=True)
    for path in exports.values():
        for name in (path.name, path.name + ".json"):
            shutil.copy(path.parent / name, folder / name)
    return folder


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX graph that edgenode did not export: no metadata, nothing to check it against."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _bench_cli(*args):
    return CliRunner().invoke(app, ["bench", *[str(a) for a in args], "--no-peak", "--repeats", "1", "--warmup", "0",
                                    "--batch-sizes", "1", "--threads", "1"])


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_tampered_or_foreign_artifact_in_a_folder_fails_before_anything_is_timed(exports, trained_run, tmp_path):
    folder = _copy_folder(exports, tmp_path / "exp")
    fp32 = folder / exports["fp32"].name
    data = bytearray(fp32.read_bytes())
    data[len(data) // 2] ^= 0x01
    fp32.write_bytes(bytes(data))
    out = tmp_path / "b"
    result = _bench_cli(folder, "--reference", trained_run.best_checkpoint, "--out", out)
    assert result.exit_code == 1
    line = _error_line(result)  # one line and nothing else: no row was timed, not even the baseline
    assert f"{fp32}: sha256" in line and "does not match its sidecar" in line
    assert not out.exists()

    _foreign_onnx(folder / "other-model.onnx")
    result = _bench_cli(folder, "--reference", trained_run.best_checkpoint, "--out", out)
    assert result.exit_code == 1
    line = _error_line(result)  # every refused file is named, in the one line
    assert line.startswith("error: 2 artifacts refused: ")
    assert "does not match its sidecar" in line and "other-model.onnx: carries no edgenode metadata" in line


def test_a_reference_of_another_input_size_refuses_every_artifact(exports, trained_run, tmp_path):
    """`bench exp --reference other-model.pt`: a 32 px reference for 64 px exports is no baseline."""
    import dataclasses

    from edgenode.checkpoint import save_checkpoint

    ckpt = load_checkpoint(trained_run.best_checkpoint)
    ckpt.input_spec = dataclasses.replace(ckpt.input_spec, image_size=32)
    other = save_checkpoint(tmp_path / "other.pt", ckpt)
    with pytest.raises(ArtifactError) as info:
        run_bench(BenchConfig(artifacts=(str(exports["fp32"].parent),), reference=str(other), peak=False, **TINY))
    message = str(info.value)
    assert message.startswith("3 artifacts refused: ")
    for path in exports.values():
        assert f"{path.name}: does not take the reference's pictures: input size 64 vs. 32 px" in message
    assert message.count("(bench artifacts exported from the reference's run)") == 1  # the one fix, said once


def test_a_provider_this_machine_lacks_fails_before_anything_is_timed(exports, trained_run, monkeypatch):
    """It was found only when its rows came, after the peak and the baseline had been timed (minutes), and a folder
    whose every row was skipped for it ended as "no artifact could be benched"."""
    from edgenode.bench import api
    from edgenode.runtime import onnx_runner
    from edgenode.runtime.providers import ProviderUnavailableError

    from edgenode.bench import peak

    monkeypatch.setattr(onnx_runner, "available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(api, "measure_row", lambda spec, session: pytest.fail(f"{spec.name} was timed"))
    monkeypatch.setattr(peak, "measure_cpu_peak", lambda *args: pytest.fail("the peak was timed"))
    reference = str(trained_run.best_checkpoint)
    for artifacts, providers in (((str(exports["fp32"].parent),), "cuda"),  # a folder, and nothing it could run on
                                 ((str(exports["fp32"]),), "cpu,cuda")):  # a file named, on a provider not here
        with pytest.raises(ProviderUnavailableError, match="--providers: provider 'cuda' .* is not available") as info:
            run_bench(BenchConfig(artifacts=artifacts, reference=reference, providers=providers, peak=True, **TINY))
        assert info.value.hint.endswith("; or leave it out of --providers")


def test_a_bench_where_no_artifact_could_run_is_an_error(exports, trained_run, tmp_path, monkeypatch):
    """Rows skipped because their runtime is missing are notes, but a table of the baseline alone is no bench: a
    folder of engines on a machine without TensorRT."""
    import sys

    from edgenode.artifacts import read_sidecar, write_sidecar

    folder = tmp_path / "on-device"
    folder.mkdir()
    engine = folder / "model-rk4x4-fp32.engine"
    engine.write_bytes(b"\x00opaque plan" * 64)
    record = {k: v for k, v in read_sidecar(exports["fp32"]).items() if k not in ("sha256", "file")}
    write_sidecar(engine, {**record, "kind": "engine"})
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ArtifactError, match="no artifact could be benched on this machine: skipped model-rk4x4-fp32.engine"):
        run_bench(BenchConfig(artifacts=(str(folder),), reference=str(trained_run.best_checkpoint), peak=False, **TINY))


def test_sizes_that_would_exhaust_the_machine_are_refused(trained_run):
    ckpt = str(trained_run.best_checkpoint)
    with pytest.raises(UsageError, match="--peak-matmul-size 100000000 is out of range: at most 8192"):
        BenchConfig(reference=ckpt, peak_matmul_size=100_000_000)
    assert BenchConfig(reference=ckpt, peak_matmul_size=8192).peak_matmul_size == 8192
    with pytest.raises(UsageError, match="--sweep-steps 1000 is out of range: an unrolled model holds 1 to 256 steps"):
        BenchConfig(reference=ckpt, sweep_steps="2,1000")
    with pytest.raises(UsageError, match="--gpu-steps 257"):
        BenchConfig(reference=ckpt, gpu_steps="257")
    result = CliRunner().invoke(app, ["bench", "--reference", ckpt, "--peak-matmul-size", "100000000"])
    assert result.exit_code == 2
    assert "--peak-matmul-size 100000000 is out of range" in _error_line(result)


def test_parsers():
    assert parse_int_list("1, 64,1", "--batch-sizes") == (1, 64)
    assert parse_int_list((8, 2), "--sweep-steps") == (8, 2)
    assert parse_providers("all") == ("all",)
    assert parse_providers("tensorrt,cpu") == ("cpu", "tensorrt")


def test_timing_statistics_without_thresholds():
    stats = summarize([4.0, 1.0, 2.0, 3.0, 100.0], batch=8)
    assert (stats.p50_ms, stats.min_ms, stats.max_ms, stats.n) == (3.0, 1.0, 100.0, 5)
    assert stats.p95_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 95))
    assert stats.throughput_ips == pytest.approx(8 / 0.003)
    calls = []
    stats = measure(lambda: calls.append(1) or 1.5, batch=1, warmup=3, repeats=4)
    assert len(calls) == 7 and stats.n == 4 and stats.p50_ms == 1.5


def test_peak_memory_sees_a_native_allocation():
    with PeakMemory() as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, allocated by numpy in C (invisible to tracemalloc's Python view)
        time.sleep(0.05)  # held long enough for the sampling fallback, where VmHWM is unavailable
        del block
    assert mem.usage.peak_delta_bytes >= 48 * 2**20


def test_input_mismatches_name_each_difference_and_bench_re_expresses_normalisation():
    """Bench and parity share one comparison of pre-processing; bench alone tolerates another mean/std, because it
    re-expresses the normalised pixels for the artifact (the same pictures reach both models)."""
    from edgenode.align import AlignSpec
    from edgenode.bench.api import _normalised_for
    from edgenode.checkpoint import InputSpec

    ref = InputSpec(64, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    other = InputSpec(48, (0.6, 0.4, 0.3), (0.2, 0.25, 0.3), AlignSpec())
    assert other.mismatches(ref) == ["input size 48 vs. 64 px",
                                     "normalisation mean/std [0.6, 0.4, 0.3]/[0.2, 0.25, 0.3] vs. [0.5, 0.4, 0.3]/[0.2, 0.25, 0.3]",
                                     "face alignment dlib-5pt (padding 0.25) vs. none"]
    assert other.mismatches(ref, normalisation=False) == ["input size 48 vs. 64 px", "face alignment dlib-5pt (padding 0.25) vs. none"]
    assert ref.mismatches(ref) == []
    pixels = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    shape = (1, 3, 1, 1)
    as_ref = (pixels - np.reshape(ref.mean, shape)) / np.reshape(ref.std, shape)
    as_other = (pixels - np.reshape(other.mean, shape)) / np.reshape(other.std, shape)
    np.testing.assert_allclose(_normalised_for(as_ref.astype(np.float32), ref, other), as_other, atol=1e-5)


def test_an_inf_or_nan_row_is_scored_wrong_and_disagreeing():
    """argmax of a NaN row is class 0: a broken artifact got accuracy and agreement for every picture of class 0."""
    from edgenode.bench.api import score_logits

    labels = np.array([0, 0, 1, 2])
    logits = np.eye(3, dtype=np.float32)[labels] * 5
    logits[0] = np.nan
    logits[1, 2] = np.inf
    pred, accuracy, agreement = score_logits(logits, labels, 3, baseline_pred=labels)
    assert accuracy.accuracy == pytest.approx(0.5) and agreement == pytest.approx(0.5)
    assert pred[2:].tolist() == [1, 2] and (pred[:2] != labels[:2]).all()
    assert score_logits(logits, labels, 3, baseline_pred=None)[2] is None
    # a baseline that predicted exactly what the inf/NaN rows are scored as: they still disagree with it
    assert score_logits(logits, labels, 3, baseline_pred=(labels + 1) % 3)[2] == 0.0


def test_a_fixed_step_baseline_solver_is_refused_on_the_command_line():
    """`--baseline-solver rk4` ran RK4 × 20 (the default steps, not the checkpoint's), dropped --baseline-tol, and
    the note credited the solver to the checkpoint."""
    from edgenode.cli.bench import parse_baseline_solver
    from edgenode.errors import UsageError

    for tol in (None, 1e-3):
        with pytest.raises(UsageError, match="takes fixed steps") as info:
            parse_baseline_solver("rk4", tol)
        assert "'trained'" in str(info.value) and "--sweep-steps" in str(info.value)
    assert parse_baseline_solver("dopri5", 1e-4) == SolverConfig("dopri5", rtol=1e-4, atol=1e-4)
    assert parse_baseline_solver("trained", None) is None


@pytest.mark.parametrize("value, expected", [("1", 1), (" 3 ", 3), ("0", None), ("two", None), ("", None), ("2,1", 2), ("²", None)])
def test_threads_default_to_omp_num_threads_where_it_is_a_whole_number(monkeypatch, value, expected):
    from edgenode.bench import machine

    monkeypatch.setattr(machine, "physical_cores", lambda: 7)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert machine.default_threads() == (expected or 7)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert machine.default_threads() == 7


def test_a_bench_without_threads_takes_omp_num_threads(trained_run, monkeypatch):
    from edgenode.bench import api

    monkeypatch.setattr(api, "physical_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = {**TINY, "threads": None}
    report = run_bench(BenchConfig(artifacts=(str(trained_run.best_checkpoint),), peak=False, **config))
    assert report.machine["threads"] == 1


def test_a_folder_runs_on_the_providers_that_are_here_and_skips_the_others(tmp_path, monkeypatch):
    """--providers cpu,cuda over a folder on a CPU-only machine: its CUDA rows become notes, nothing is refused;
    a file named on the command line, or a folder with none of its providers here, is refused up front."""
    from edgenode.bench.api import refuse_unrunnable
    from edgenode.runtime import onnx_runner
    from edgenode.runtime.providers import ProviderUnavailableError

    monkeypatch.setattr(onnx_runner, "available_providers", lambda: ["CPUExecutionProvider"])
    onnx_file = tmp_path / "model.onnx"
    both = BenchConfig(artifacts=(str(tmp_path),), reference="ref.pt", providers="cpu,cuda", **TINY)
    refuse_unrunnable([(onnx_file, "onnx", True)], both)
    with pytest.raises(ProviderUnavailableError, match="--providers: provider 'cuda'"):
        refuse_unrunnable([(onnx_file, "onnx", False)], both)
    with pytest.raises(ProviderUnavailableError, match="--providers: provider 'cuda'"):
        refuse_unrunnable([(onnx_file, "onnx", True)], BenchConfig(artifacts=(str(tmp_path),), reference="ref.pt",
                                                                     providers="cuda", **TINY))


def test_a_missing_runtime_skips_an_optional_row_but_fails_a_required_one(monkeypatch):
    from types import SimpleNamespace

    import edgenode.bench.api as api
    from edgenode.runtime.providers import ProviderUnavailableError

    def unavailable(spec, session):
        raise ProviderUnavailableError("provider 'cuda' is not available here", "install it")

    monkeypatch.setattr(api, "measure_row", unavailable)
    session = SimpleNamespace(config=SimpleNamespace(batch_sizes=(1, 4), quiet=True), notes=[], rows=[], say=lambda text: None)
    skipped = api.run_specs([api.RowSpec("found.onnx [cuda]", "artifact", lambda: None, optional=True)], session)
    assert skipped == session.notes and skipped[0].startswith("skipped found.onnx [cuda]: provider 'cuda'")
    with pytest.raises(ProviderUnavailableError):
        api.run_specs([api.RowSpec("named.onnx [cuda]", "artifact", lambda: None, optional=False)], session)


def test_peak_flop_counts_are_those_of_the_graphs_measured():
    """The conv chain's count includes its bias adds, as the graph counter (and so every row's FLOPs) does."""
    import onnx

    config = PeakConfig(batch=3, channels=8, size=5, depth=2, matmul_size=16)
    assert onnx_graph_flops(onnx.load_from_string(conv_chain_onnx(config)), batch=3)["flops"] == config.conv_flops
    assert onnx_graph_flops(onnx.load_from_string(matmul_onnx(16)))["flops"] == config.matmul_flops == 2 * 16**3


def test_a_peak_rate_is_flops_over_the_fastest_repeat_in_gflops():
    from dataclasses import replace

    conv = PeakMeasurement("torch conv", "cpu", "fp32", "shape", flops_per_call=3_000_000_000, best_ms=2.0, p50_ms=4.0)
    assert conv.gflops == pytest.approx(1500.0) and conv.gflops_p50 == pytest.approx(750.0)
    peak = Peak(PeakConfig(), [conv, replace(conv, name="torch matmul", best_ms=1.0)])
    assert peak.flops_per_s("cpu") == pytest.approx(3e12) and peak.flops_per_s("cuda") is None


def test_a_rows_memory_delta_is_never_negative():
    """Memory freed during a row (an earlier row's arena given back) is not a negative cost."""
    assert MemoryUsage(100, 40, "VmHWM").peak_delta_bytes == 0 and MemoryUsage(40, 100, "VmHWM").peak_delta_bytes == 60


def test_the_kernels_memory_figures_are_read_in_kib():
    from edgenode.bench.memory import _status_kib, current_rss_bytes

    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc here")
    assert abs(_status_kib("VmRSS") * 1024 - current_rss_bytes()) < 16 * 2**20
    assert _status_kib("NoSuchField") is None
