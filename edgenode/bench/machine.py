"""What machine the numbers were measured on, and how many threads to give the runtimes.

Intra-op threads default to ``OMP_NUM_THREADS`` where it is set, else to the number of *physical* cores this
process may run on: that is ONNX Runtime's own default, and hyper-threads share one core's vector units, so more
threads than cores adds contention, not FLOPs. Every runtime in a bench (ONNX Runtime sessions, torch, the peak kernels) gets the same number,
so rows and the peak are measured on equal terms.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read()
    except OSError:
        return ""


def physical_cores() -> int:
    """Physical cores usable by this process (distinct (package, core) pairs in /proc/cpuinfo, capped by
    the CPU affinity mask); ``os.cpu_count()`` where /proc/cpuinfo says nothing."""
    cores = set()
    for block in _cpuinfo().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    count = len(cores) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    return max(1, count)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` where it is set to a whole number (the user's word on how many cores this job may take;
    of a nested list such as ``2,1``, the first), else the physical cores.

    A runtime given more threads than it gets cores waits on its own threads: on a 2-core machine running two
    training jobs, a batch-1 torch call of the demo's model took 0.1 to 1.8 s with 2 threads and 50 to 65 ms with
    one, so a bench that ignored the variable reported speed-ups over that baseline of 1,000x."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP's "2,1": 2 at the top level
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else physical_cores()


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(threads: int, gpu: bool = True) -> dict[str, Any]:
    """CPU, threads, library versions, and the GPU when torch sees one (without initialising CUDA otherwise).

    ``gpu=False`` leaves the GPU's name out, which would initialise CUDA: for a record written while CPU rows are
    still being timed."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": bool(torch.cuda.is_available()),
        "load_average_1min": load_average(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        info["onnxruntime"] = None
    if info["cuda"] and gpu:
        info["gpu"] = torch.cuda.get_device_name()
        # the process's defaults, which the fp32 rows and the fp32 peak do not use: they compute in IEEE float32
        info["tf32"] = {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32),
                        "fp32_rows": False}
    return info
