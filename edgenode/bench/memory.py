"""Peak memory of one benchmark row, in a process that runs many rows.

``ru_maxrss`` is a process-wide high-water mark (it only ever grows, so every row after the largest would
read the same), and ``tracemalloc`` sees only Python allocations, not ONNX Runtime's or torch's C++ ones.
What we do instead, per row:

1. release what earlier rows left behind: ``gc.collect()`` and glibc's ``malloc_trim(0)``, so freed arenas
   go back to the OS instead of being silently reused by this row (which would hide its cost);
2. take the resident set size (RSS) now as the row's baseline;
3. reset the kernel's high-water mark (Linux: write ``5`` to ``/proc/self/clear_refs``, which sets ``VmHWM``
   to the current RSS) and read ``VmHWM`` when the row is done: the exact peak RSS of the row, at no cost
   while it runs. Where that file cannot be written (not Linux, a locked-down container), a thread samples
   RSS every few milliseconds instead — it can miss a short spike and takes a little CPU.

The row's figure is ``peak - baseline``: what loading the artifact and running it (session, arena, weights,
activations, workspace) added to the process. Shared libraries loaded once for the first row of a runtime
are counted in that row only, so the bench imports them before the first row. On a GPU,
:func:`cuda_peak_bytes` adds torch's device-memory high-water mark (``max_memory_allocated``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc only; a no-op elsewhere)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``; ``ru_maxrss`` where there is no /proc)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water_mark() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


@dataclass
class MemoryUsage:
    baseline_bytes: int
    peak_bytes: int
    method: str  # "VmHWM" (kernel high-water mark) or "sampled RSS"

    @property
    def peak_delta_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)

    def to_dict(self) -> dict:
        return {"baseline_bytes": self.baseline_bytes, "peak_bytes": self.peak_bytes,
                "peak_delta_bytes": self.peak_delta_bytes, "method": self.method}


class PeakMemory:
    """``with PeakMemory() as mem: ...`` then ``mem.usage`` — see the module docstring."""

    def __init__(self, sample_interval_s: float = 0.002):
        self.sample_interval_s = sample_interval_s
        self.usage: MemoryUsage | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            self._sampled_peak = max(self._sampled_peak, current_rss_bytes())

    def __enter__(self) -> "PeakMemory":
        release_memory()
        self._baseline = current_rss_bytes()
        self._kernel = _reset_high_water_mark()
        if not self._kernel:
            self._sampled_peak = self._baseline
            self._thread = threading.Thread(target=self._sample, name="edgenode-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        now = current_rss_bytes()
        if self._kernel:
            hwm = _status_kib("VmHWM")
            peak, method = max(now, (hwm or 0) * 1024), "VmHWM"
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak, method = max(now, self._sampled_peak), "sampled RSS"
        self.usage = MemoryUsage(self._baseline, peak, method)


def cuda_peak_bytes(reset: bool = False) -> int | None:
    """torch's CUDA high-water mark (bytes) — only when torch is already imported and sees a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return 0
    return int(torch.cuda.max_memory_allocated())
