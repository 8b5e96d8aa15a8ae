"""Timing a call: warm up, repeat, summarise as p50/p95 — the statistics every row is reported with.

The median (p50) is the headline: one slow call (another process waking up, a page fault) moves the mean
but not the median. p95 shows the tail. Throughput is ``batch / p50``. Nothing here knows about devices:
the caller passes a function that runs one call and returns *its* elapsed milliseconds, measured the way
its device needs (``time.perf_counter`` on the CPU, CUDA events after a synchronise on a GPU).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from edgenode.errors import UsageError


@dataclass(frozen=True)
class TimingStats:
    """Latency of ``n`` timed calls of ``batch`` images each, in milliseconds."""

    batch: int
    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @property
    def throughput_ips(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.p50_ms / 1000.0) if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput_ips": self.throughput_ips}


def summarize(times_ms: Sequence[float], batch: int) -> TimingStats:
    """p50/p95 (linear interpolation), mean, min and max of per-call milliseconds."""
    if not len(times_ms):
        raise ValueError("no timed calls to summarise")
    t = np.asarray(times_ms, dtype=np.float64)
    return TimingStats(batch, len(t), float(np.percentile(t, 50)), float(np.percentile(t, 95)),
                       float(t.mean()), float(t.min()), float(t.max()))


def measure(call: Callable[[], float], batch: int, warmup: int, repeats: int) -> TimingStats:
    """Run ``call`` ``warmup`` times untimed, then ``repeats`` times; ``call`` returns its own elapsed ms."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats} warmup={warmup}")
    for _ in range(warmup):
        call()
    return summarize([call() for _ in range(repeats)], batch)


def wall_ms(fn: Callable[[], object]) -> Callable[[], float]:
    """Wrap a CPU call so that it returns its wall-clock milliseconds (``time.perf_counter``)."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0

    return timed
