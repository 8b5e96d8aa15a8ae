"""One bench row with a stand-in runner (how often it runs, what it scores), the machine a bench ran on
(physical cores, the affinity mask), and the GPU rows' module, checked on the CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from edgenode.bench import BenchConfig, machine
from edgenode.bench.api import RowInfo, RowSpec, _Inputs, _Session, measure_row
from edgenode.bench.gpu import UnrolledForward
from edgenode.checkpoint import InputSpec
from edgenode.errors import UsageError
from edgenode.model import build_model, preset_config
from edgenode.ode.solvers import SolverConfig

CLASSES = ["a", "b", "c"]
SPEC = InputSpec(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class _Runner:
    """Answers class ``i % 3`` for the i-th picture of a call; records the batch size of every call."""

    def __init__(self):
        self.calls, self.last_inference_ms, self.closed = [], 1.0, False

    def infer(self, x):
        self.calls.append(len(x))
        return np.eye(3, dtype=np.float32)[np.arange(len(x)) % 3]

    def describe(self):
        return "stand-in"

    def close(self):
        self.closed = True


def _session(classes=CLASSES, manifest_sha256="m" * 64, **config):
    config = BenchConfig(reference="ref.pt", **{"batch_sizes": (1, 4), "warmup": 3, "repeats": 2, "quiet": True, **config})
    pool = np.zeros((4, 3, 16, 16), np.float32)
    labels = np.arange(6) % 3
    inputs = _Inputs(SPEC, pool, "zeros", x=np.zeros((6, 3, 16, 16), np.float32), labels=labels)
    session = _Session(config, inputs, {b: pool[:b] for b in config.batch_sizes}, list(CLASSES), "m" * 64)
    session.baseline_pred = np.array([0, 1, 2, 0, 0, 0])
    model = preset_config("odenet", len(classes), width=8).to_dict()
    info = RowInfo("onnx", "fp32", SolverConfig("rk4", n_steps=2), model, SPEC, list(classes), manifest_sha256=manifest_sha256)
    runner = _Runner()
    return session, RowSpec("model.onnx", "artifact", lambda: (runner, info)), runner


def test_a_row_runs_warmup_then_repeats_calls_per_batch_size_and_scores_the_split():
    """--warmup counts every untimed call, the first one of each shape included: warmup + repeats calls per batch
    size, then the split in chunks of the largest batch; accuracy and agreement with the baseline follow."""
    session, spec, runner = _session()
    row, pred = measure_row(spec, session)
    assert runner.calls.count(1) == 3 + 2 and runner.calls.count(4) == 3 + 2 + 1 and runner.calls.count(2) == 1
    assert row.timings[1].n == 2 and row.timings[4].n == 2 and runner.closed
    assert pred.tolist() == [0, 1, 2, 0, 0, 1] and row.accuracy.accuracy == pytest.approx(4 / 6)  # chunks of 4 and 2
    assert row.agreement == pytest.approx(5 / 6) and row.nfe == {1: 8, 4: 8} and row.notes == []


def test_a_row_with_other_classes_is_timed_but_not_scored():
    """An artifact with another class list cannot be scored against the reference's labels: no accuracy, no
    agreement, and a note says why; one exported from another split is scored, with a note."""
    session, spec, runner = _session(classes=["a", "b", "x"])
    row, pred = measure_row(spec, session)
    assert pred is None and row.accuracy is None and row.agreement is None and 2 not in runner.calls
    assert row.notes == ["its 3 classes are not the reference's 3: no accuracy or agreement"]
    session, spec, _ = _session(manifest_sha256="o" * 64)
    row, pred = measure_row(spec, session)
    assert row.accuracy is not None
    assert row.notes == ["exported from another split than the reference's; scored on the reference's split"]


def test_a_manifest_without_data_is_refused():
    """--manifest picks the split to score, which needs --data: alone it would be silently ignored."""
    with pytest.raises(UsageError, match="--manifest is only used with --data"):
        BenchConfig(reference="ref.pt", manifest="manifest.json")
    assert BenchConfig(reference="ref.pt", manifest="manifest.json", data="data").manifest == "manifest.json"


def test_only_rows_the_user_did_not_name_are_optional(monkeypatch, tmp_path):
    """A file named on the command line runs on the CPU or fails the bench; with --providers all, its rows on the
    GPU providers found installed are optional (skipped with a note), and every row of a folder's file is."""
    from edgenode.bench import api

    monkeypatch.setattr(api, "_available_providers", lambda: ["cpu", "cuda", "tensorrt"])
    onnx = tmp_path / "model.onnx"
    config = BenchConfig(reference="ref.pt", providers="all")
    named = {s.name: s.optional for s in api.artifact_specs([(onnx, "onnx", False)], config, 1)}
    assert named == {"model.onnx": False, "model.onnx [cuda]": True, "model.onnx [tensorrt]": True}
    found = {s.name: s.optional for s in api.artifact_specs([(onnx, "onnx", True)], config, 1)}
    assert found == {"model.onnx": True, "model.onnx [cuda]": True, "model.onnx [tensorrt]": True}
    asked = BenchConfig(reference="ref.pt", providers="cpu,cuda")
    assert [s.optional for s in api.artifact_specs([(onnx, "onnx", False)], asked, 1)] == [False, False]


def test_an_onnx_row_on_a_gpu_provider_is_a_gpu_row(shared_exports, monkeypatch):
    """The row's device follows the provider it runs on: CUDA and TensorRT rows are compared with the GPU peak
    and recorded as device cuda in bench.json, CPU rows as cpu."""
    from edgenode.bench import api
    from edgenode.runtime import onnx_runner, predictor

    class FakeRunner:
        def __init__(self, path, providers, **kwargs):
            self.providers = providers

    monkeypatch.setattr(onnx_runner, "OnnxRuntimeRunner", FakeRunner)
    monkeypatch.setattr(onnx_runner, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(predictor, "ort_providers", lambda info, provider, present: [provider])
    devices = {p: api._onnx_file_loader(shared_exports["fp32"], p, 1)()[1].device for p in ("cpu", "cuda", "tensorrt")}
    assert devices == {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}


def test_sweep_and_gpu_rows_unroll_the_trained_fixed_step_method():
    """The sweep and GPU rows unroll the method the checkpoint was trained with when it is fixed-step (a euler
    model stays euler), classic rk4 for an adaptive one, and --sweep-method when given."""
    from types import SimpleNamespace

    from edgenode.bench.api import unroll_method

    def ckpt(solver):
        return SimpleNamespace(model_config=SimpleNamespace(solver=solver))

    config = BenchConfig(reference="ref.pt")
    assert unroll_method(config, ckpt(SolverConfig("euler", n_steps=4))) == "euler"
    assert unroll_method(config, ckpt(SolverConfig("dopri5"))) == "rk4"
    assert unroll_method(BenchConfig(reference="ref.pt", sweep_method="midpoint"), ckpt(SolverConfig("euler", n_steps=4))) == "midpoint"


TINY = dict(batch_sizes=(1, 2), warmup=1, repeats=1, peak=False, quiet=True)


def test_threads_asked_for_win_over_omp_num_threads(trained_run, monkeypatch, one_thread):
    """--threads N is used as given, whatever OMP_NUM_THREADS says (the variable is only the default)."""
    from edgenode.bench import run_bench

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    report = run_bench(BenchConfig(artifacts=(str(trained_run.best_checkpoint),), threads=1, **TINY))
    assert report.machine["threads"] == 1 and report.config["threads"] == 1


def test_gpu_rows_unroll_the_step_counts_of_the_artifacts_benched(shared_exports, trained_run, monkeypatch, one_thread):
    """On a GPU, the torch CUDA rows take the benched artifacts' step counts (here RK4×4) before the sweep's:
    they are the deployments the GPU rows are compared with."""
    from edgenode.bench import api, run_bench

    asked = []
    monkeypatch.setattr(api, "_cuda", lambda: True)
    monkeypatch.setattr(api, "gpu_specs", lambda config, ckpt, baseline, steps: asked.append(tuple(steps)) or [])
    run_bench(BenchConfig(artifacts=(str(shared_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                          threads=1, sweep_steps="2", sweep_backends="torch", **TINY))
    assert asked == [(4,)]
    asked.clear()
    run_bench(BenchConfig(artifacts=(str(shared_exports["fp32"]),), reference=str(trained_run.best_checkpoint),
                          threads=1, sweep_steps="2", sweep_backends="torch", gpu_steps="8", **TINY))
    assert asked == [(8,)]


def test_whole_numbers_only_for_batch_sizes_and_steps():
    """1.5 is not a batch size (it would be run as 1); a float that is a whole number is taken."""
    from edgenode.bench.api import parse_int_list

    with pytest.raises(UsageError, match="--batch-sizes 1.5 must be a positive whole number"):
        parse_int_list((1.5,), "--batch-sizes")
    with pytest.raises(UsageError, match="--batch-sizes 1.5 must be a positive whole number"):
        BenchConfig(reference="ref.pt", batch_sizes=(1, 1.5))
    assert parse_int_list((2.0, 8), "--sweep-steps") == (2, 8)


def test_one_refused_artifact_is_named_by_its_own_error(tmp_path):
    """A single artifact that cannot be benched fails with its own message and hint, as parity would say it; the
    "N artifacts refused" summary is for several."""
    import onnx
    from onnx import TensorProto, helper

    from edgenode.bench.api import refuse_unusable
    from edgenode.errors import ArtifactError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [x], [y])
    path = tmp_path / "other-model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ArtifactError) as info:
        refuse_unusable([(path, "onnx", False)], SPEC)
    assert info.value.message.startswith(f"{path}: carries no edgenode metadata")  # not "1 artifacts refused: …"


def test_a_bench_started_on_a_busy_machine_says_so(trained_run, monkeypatch, one_thread):
    """A 1-minute load average above the physical core count at the start makes the times unreliable: the report's
    notes say so, with the figures; at or below it, nothing is said."""
    from edgenode.bench import api, run_bench

    monkeypatch.setattr(api, "physical_cores", lambda: 2)
    config = BenchConfig(artifacts=(str(trained_run.best_checkpoint),), threads=1, **TINY)
    monkeypatch.setattr(api, "load_average", lambda: 6.5)
    busy = [n for n in run_bench(config).notes if "busy" in n]
    assert len(busy) == 1 and busy[0].startswith("the machine was busy when the bench started (1-minute load average "
                                                 "6.5 on 2 cores)")
    assert "--threads 1" not in busy[0]  # it already runs on one thread
    monkeypatch.setattr(api, "load_average", lambda: 2.0)
    assert not [n for n in run_bench(config).notes if "busy" in n]


def test_a_batch_larger_than_the_pictures_repeats_them():
    """Timing batches always hold the batch size asked for: with fewer pictures (a small split, batch 64), they
    are repeated, so throughput is computed over images that were run."""
    from edgenode.bench.api import _batch

    pool = np.arange(3, dtype=np.float32).reshape(3, 1, 1, 1)
    assert _batch(pool, 5).reshape(-1).tolist() == [0, 1, 2, 0, 1]
    assert _batch(pool, 2).reshape(-1).tolist() == [0, 1] and _batch(pool, 2).flags["C_CONTIGUOUS"]


def _cpuinfo(pairs):
    """/proc/cpuinfo text with one processor block per (physical id, core id) pair."""
    return "\n\n".join(f"processor\t: {i}\nmodel name\t: Test CPU @ 2.0GHz\nphysical id\t: {package}\ncore id\t\t: {core}"
                       for i, (package, core) in enumerate(pairs)) + "\n"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_physical_cores_count_distinct_cores_of_every_package_within_the_affinity_mask(monkeypatch):
    """Hyper-threads of one core count once; core 0 of package 0 and core 0 of package 1 are two cores; a process
    allowed on fewer CPUs than that gets no more threads than it may use."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(machine, "_cpuinfo", lambda: _cpuinfo([(0, 0), (0, 0), (0, 1), (0, 1)]))
    assert machine.physical_cores() == 2  # two cores with two hyper-threads each
    monkeypatch.setattr(machine, "_cpuinfo", lambda: _cpuinfo([(0, 0), (1, 0), (0, 1), (1, 1)]))
    assert machine.physical_cores() == 4  # two packages whose core ids repeat
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert machine.physical_cores() == 1  # taskset -c 0
    assert machine.cpu_model() == "Test CPU @ 2.0GHz"


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4_38"])
def test_unrolled_forward_integrates_with_the_method_it_is_given(method, one_thread):
    """The side-effect-free module computes what with_solver(method × N) computes for every fixed-step method,
    not only classic rk4: a euler-trained model's GPU rows run euler."""
    torch.manual_seed(0)
    model = build_model(preset_config("odenet", 4, width=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.with_solver(SolverConfig(method, n_steps=3)).eval()(x)
        got = UnrolledForward(model, method, 3).eval()(x)
        rk4 = model.with_solver(SolverConfig("rk4", n_steps=3)).eval()(x)
    assert torch.equal(got, expected) and not torch.allclose(got, rk4, atol=1e-6)


def test_gpu_rows_cover_every_dtype_eager_and_compiled(trained_run):
    """On a GPU, each step count gets FP32, FP16 and BF16 rows, eager and torch.compile'd, after the adaptive FP32
    row; every one is optional (a failing compiler skips its row, not the bench). Built without touching CUDA."""
    from edgenode.bench import BenchConfig
    from edgenode.bench.api import gpu_specs
    from edgenode.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained_run.best_checkpoint)
    specs = gpu_specs(BenchConfig(reference="ref.pt"), ckpt, SolverConfig("dopri5"), (2,))
    assert [s.name for s in specs] == ["adaptive torch cuda eager fp32"] + [
        f"rk4×2 torch cuda {how} {dtype}" for dtype in ("fp32", "fp16", "bf16") for how in ("eager", "compiled+graphs")]
    assert all(s.optional and s.group == "gpu" for s in specs)
    eager_only = gpu_specs(BenchConfig(reference="ref.pt", gpu_compile=False), ckpt, SolverConfig("dopri5"), (2, 4))
    assert len(eager_only) == 1 + 2 * 3 and not [s for s in eager_only if "compiled" in s.name]
