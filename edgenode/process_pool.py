"""One function over many files in worker processes, with a progress bar: how edgenode runs dlib.

dlib holds the GIL while it computes and its objects must not be shared between threads, so parallel dlib work
(teacher descriptors, face alignment) needs processes, each building its own dlib objects in an initializer.
They are spawned, not forked: forking a process that runs a progress-bar thread is unsafe. Spawned workers
re-import the main script, so a script that calls this needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from edgenode.errors import EdgenodeError, UsageError, is_whole_number


def default_workers(n_items: int) -> int:
    """One process per core, but no pool for a handful of items (a worker's start-up costs ~1 s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, n_items // 32))


def resolve_workers(workers: int | None, n_items: int) -> int:
    """``workers`` as a process count: None picks :func:`default_workers`; anything but a positive integer fails."""
    workers = default_workers(n_items) if workers is None else workers
    if not is_whole_number(workers):
        raise UsageError(f"workers={workers!r} is not a positive integer", "use 1 (in-process) or more processes")
    return int(workers)


def _start_worker(initializer: Callable[..., None], *initargs) -> None:
    """A worker's start: Pillow's decompression-bomb warning off, then the caller's initializer.

    A command turns the warning off (``cli.common``), but a spawned worker starts with Python's default filters.
    """
    from edgenode.data.decode import ignore_bomb_warning

    ignore_bomb_warning()
    initializer(*initargs)


def process_map(func: Callable[[Any], Any], items: Sequence, *, initializer: Callable[..., None], initargs: tuple,
                workers: int | None, description: str, progress: bool = True, chunksize: int = 8,
                rerun_hint: str = "") -> list:
    """``[func(item) for item in items]``, in order, after ``initializer(*initargs)`` in each worker.

    ``workers`` None picks :func:`default_workers`; 1 (or a single item) runs in this process, where an error
    shows its own traceback. ``func``, ``initializer`` and ``initargs`` must be picklable (module-level).
    ``rerun_hint`` says what running again keeps, for the error raised when a worker dies.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from edgenode.console import progress_bar

    workers = resolve_workers(workers, len(items))
    results: list = []
    if not items:
        return results
    with progress_bar(description, len(items), enabled=progress) as advance:
        if workers == 1 or len(items) <= 1:
            initializer(*initargs)
            for item in items:
                results.append(func(item))
                advance()
            return results
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(initializer, *initargs))
        try:
            with ctrl_c_ignored():  # map submits every chunk now, which starts the workers: they inherit it
                chunks = pool.map(func, items, chunksize=chunksize)
            for result in chunks:
                results.append(result)
                advance()
        except BrokenProcessPool:
            _stop(pool)
            raise EdgenodeError(
                f"a worker process ({description}) stopped abruptly after {len(results)} of {len(items)} items (out of "
                "memory, or a script without an `if __name__ == '__main__':` guard, which spawned workers re-run)",
                f"{rerun_hint}guard the script's entry point, or pass workers=1 to see the error in this process") from None
        except BaseException:  # Ctrl-C, or a worker's error: stop now rather than wait for the queued items
            _stop(pool)
            raise
        pool.shutdown()
    return results


@contextlib.contextmanager
def ctrl_c_ignored():
    """SIGINT ignored for the block. Worker processes started in it inherit that, so Ctrl-C (sent to the terminal's
    whole process group) reaches only this process, which stops the pool: a worker interrupted mid-task or
    mid-start-up printed its own traceback, and one interrupted holding the pool's queue lock left the pool waiting
    for ever. (On POSIX an ignored signal stays ignored across the spawn's exec, and Python installs its
    KeyboardInterrupt handler only where SIGINT was not ignored at start-up; Windows workers start as they are.)
    Outside the main thread, where signals cannot be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)  # None: set outside Python


def _stop(pool) -> None:
    """Cancel what is queued and end the workers without waiting for them (``shutdown(wait=True)``, what leaving a
    ``with`` block does, would finish every queued item first)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    with ctrl_c_ignored():  # a second Ctrl-C must not leave workers running
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
