"""The bench's parts as a reader meets them: the CPU peak (each kernel credited with its own FLOPs, the caller's
torch threads left as they were, a configuration that could time nothing refused), each row's own peak memory,
and the report's figures (which batch each column is at, percentages, the FLOP table, strict JSON)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from edgenode.artifacts import human_size
from edgenode.bench.flops import ModelFlops
from edgenode.bench.memory import MemoryUsage, PeakMemory
from edgenode.bench.peak import PeakConfig, measure_cpu_peak
from edgenode.bench.report import BenchReport, BenchRow, columns, markdown, row_cells
from edgenode.bench.timing import TimingStats
from edgenode.errors import UsageError
from edgenode.metrics import ClassificationMetrics

MIB = 2**20


@pytest.mark.parametrize("field", ["batch", "channels", "size", "depth", "matmul_size", "repeats"])
def test_a_peak_configuration_with_a_zero_count_is_refused(field):
    """Zero repeats (or an empty shape) would time nothing: refused when the configuration is made, naming the field."""
    with pytest.raises(UsageError, match=f"peak measurement: {field} must be a positive whole number"):
        PeakConfig(**{field: 0})


def test_each_peak_kernel_is_credited_with_its_own_flops_and_torch_threads_are_restored():
    """The conv rows carry the conv chain's FLOPs and the matmul rows the matmul's; the measurement runs torch with
    the bench's thread count and gives the caller's count back."""
    config = PeakConfig(batch=1, channels=4, size=4, depth=1, matmul_size=16, warmup=0, repeats=1)
    assert config.conv_flops != config.matmul_flops
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = measure_cpu_peak(config, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert [m.name for m in rows] == ["onnxruntime conv", "onnxruntime matmul", "torch conv", "torch matmul"]
    for m in rows:
        want = config.conv_flops if m.name.endswith("conv") else config.matmul_flops
        assert m.flops_per_call == want, m.name
        assert (m.device, m.dtype, m.threads) == ("cpu", "fp32", 1)


def test_a_row_after_a_large_one_does_not_inherit_its_peak():
    """The kernel's VmHWM only grows; unless each row resets it, a small row after a 64 MiB one reads that peak."""
    with PeakMemory() as large:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, allocated in C
        time.sleep(0.05)  # held long enough for the sampling fallback, where VmHWM is unavailable
        del block
    if large.usage.method == "VmHWM":  # the sampling fallback may miss a short peak on a busy machine
        assert large.usage.peak_delta_bytes >= 48 * 2**20
    with PeakMemory() as small:
        small_block = np.ones(2**20 // 8)  # 1 MiB
        del small_block
    assert small.usage.peak_delta_bytes < 24 * 2**20


def _stats(batch: int, p50_ms: float) -> TimingStats:
    return TimingStats(batch, 3, p50_ms, p50_ms * 1.5, p50_ms, p50_ms * 0.5, p50_ms * 2)


def _report(batch_sizes=(4, 1)) -> BenchReport:
    """A baseline (adaptive: its FLOPs differ per batch) and one artifact; batch sizes given largest first."""
    metrics = ClassificationMetrics(0.75, (0.55, 0.88), 0.7, 0.7, 0.7, 24)
    baseline = BenchRow("best.pt (baseline)", "baseline", "checkpoint", "torch (cpu)", "cpu", "fp32", "dopri5", None,
                        timings={1: _stats(1, 10.0), 4: _stats(4, 20.0)}, nfe={1: 26, 4: 32},
                        flops_per_image={1: 1_500_000_000, 4: 2_500_000_000}, speedup={1: 1.0, 4: 1.0},
                        accuracy=metrics)
    artifact = BenchRow("model.onnx", "artifact", "onnx", "onnxruntime (CPUExecutionProvider)", "cpu", "fp16", "rk4×4", 4,
                        timings={1: _stats(1, 5.0), 4: _stats(4, 2.5)}, nfe={1: 16, 4: 16},
                        flops_per_image={1: 1_000_000_000, 4: 1_000_000_000}, speedup={1: 2.0, 4: 8.0},
                        fraction_of_peak={1: 0.05, 4: 0.125}, peak_key="cpu/fp32",
                        memory=MemoryUsage(baseline_bytes=300 * MIB, peak_bytes=350 * MIB, method="VmHWM"),
                        accuracy=metrics, agreement=0.75)
    flops = ModelFlops(image_size=64, state_shape=(16, 16, 16), stem=1_234_000, f_eval=56_000_000, head=7_890)
    machine = {"cpu": "test cpu", "physical_cores": 2, "logical_cpus": 2, "threads": 1, "torch": "x", "onnxruntime": "y"}
    return BenchReport(machine, {}, batch_sizes, flops, [baseline, artifact])


def test_latency_is_at_the_smallest_batch_and_throughput_at_the_largest_in_any_order():
    """`--batch-sizes 4,1` keeps its order; latency is still read at batch 1 and throughput at batch 4."""
    report = _report((4, 1))
    assert (report.latency_batch, report.throughput_batch) == (1, 4)
    assert "p50 ms (b=1)" in columns(report) and "img/s (b=4)" in columns(report)


def test_row_cells_are_at_the_batch_their_column_names():
    report = _report()
    header = columns(report)
    cells = dict(zip(header, row_cells(report, report.rows[1])))
    assert cells["Speed-up b=1"] == "2.00×" and cells["Speed-up b=4"] == "8.00×"
    assert cells["p50 ms (b=1)"] == "5" and cells["img/s (b=4)"] == "1600"
    assert cells["% peak (b=4)"] == "12.5 %"  # a fraction of 0.125, printed as a percentage
    assert cells["Agreement"] == "75.0 %"
    assert cells["Peak mem"] == human_size(50 * MIB) == "50.0 MiB"  # what the row added, not the process's size
    base = dict(zip(header, row_cells(report, report.rows[0])))
    assert base["GFLOP/img"] == "2.5"  # the adaptive baseline's FLOPs at the throughput batch (b=4), not b=1's 1.5
    assert base["NFE"] == "26"  # the NFE column is at the latency batch


def test_the_markdown_flop_table_shows_each_part():
    md = markdown(_report())
    assert "| stem (once) | 1,234,000 |" in md
    assert "| f (one evaluation) | 56,000,000 |" in md
    assert "| one RK4 step (4 evaluations) | 224,000,000 |" in md
    assert "| head (once) | 7,890 |" in md


def test_a_non_finite_rate_is_null_in_strict_json():
    """A 0 ms timer tick gives an infinite rate: bench.json holds null there, never Infinity (not JSON)."""
    report = _report()
    report.rows[1].timings[4] = _stats(4, 0.0)
    assert report.rows[1].throughput_ips(4) == float("inf")
    record = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert record["rows"][1]["timings"]["4"]["throughput_ips"] is None
    assert record["rows"][1]["timings"]["4"]["p50_ms"] == 0.0
