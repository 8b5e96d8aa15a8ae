"""``edgenode bench``: speed, size, memory and accuracy of every artifact, side by side, against the limit.

``run_bench(BenchConfig(...)) -> BenchReport`` (:mod:`edgenode.bench.api`); FLOPs are counted in
:mod:`edgenode.bench.flops`, the machine's peak measured in :mod:`edgenode.bench.peak`, per-row memory in
:mod:`edgenode.bench.memory`; :mod:`edgenode.bench.report` writes the table, JSON, Markdown and plots.
"""

from edgenode.bench.api import BenchConfig, run_bench
from edgenode.bench.flops import ModelFlops, config_flops, model_flops, onnx_graph_flops
from edgenode.bench.peak import Peak, PeakConfig, PeakMeasurement
from edgenode.bench.report import BenchReport, BenchRow, rich_tables, write_report
from edgenode.bench.timing import TimingStats

__all__ = [
    "BenchConfig",
    "BenchReport",
    "BenchRow",
    "ModelFlops",
    "Peak",
    "PeakConfig",
    "PeakMeasurement",
    "TimingStats",
    "config_flops",
    "model_flops",
    "onnx_graph_flops",
    "rich_tables",
    "run_bench",
    "write_report",
]
