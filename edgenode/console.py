"""The one rich console every stage prints to (stderr, so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # logs and CI: rich's 80-column default squeezes the tables


_bars_hidden = False


@contextlib.contextmanager
def progress_bars_hidden(hidden: bool = True) -> Iterator[None]:
    """Hide every stage's bars while inside: ``demo --no-progress`` runs export, parity and calibration, whose
    configurations have no ``progress`` of their own."""
    global _bars_hidden
    before, _bars_hidden = _bars_hidden, _bars_hidden or hidden
    try:
        yield
    finally:
        _bars_hidden = before


# off a terminal (a log file, nohup, CI) a bar is one line at most this often: the tight dopri5 reference of parity or
# an epoch on a CPU runs for minutes, and a log that says nothing meanwhile looks hung
LOG_EVERY_SECONDS = 30.0


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; draws a transient bar on a terminal, a progress line every ``LOG_EVERY_SECONDS`` off
    one (none for work that ends sooner), nothing when disabled or hidden."""
    if not enabled or _bars_hidden:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        yield _progress_lines(description, total)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _progress_lines(description: str, total: int) -> Callable[[int], None]:
    start = last = time.monotonic()
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last < LOG_EVERY_SECONDS or done >= total:
            return
        last = now
        elapsed = now - start
        left = elapsed * (total - done) / done if done else float("nan")
        console.print(f"{description}: {done}/{total} ({100 * done / total:.0f} %), {_clock(elapsed)} elapsed, "
                      f"about {_clock(left)} left", markup=False, highlight=False)

    return advance


def _clock(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
