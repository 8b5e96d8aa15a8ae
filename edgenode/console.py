"""The one rich console every stage prints to (stderr, so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; draws a transient bar on a terminal, nothing when disabled, hidden or not a TTY."""
    if not enabled or _bars_hidden or not console.is_terminal:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
