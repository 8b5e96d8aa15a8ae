"""Progress output: hiding nests, and long runs print hours."""

from __future__ import annotations

import types

from edgenode import console as console_module


def test_a_nested_progress_bars_hidden_false_keeps_the_outer_hiding(monkeypatch):
    """Inside `demo --no-progress` (bars hidden), a stage that says "not hidden" for itself still draws nothing."""
    drawn: list[str] = []

    class Recording:
        def __init__(self, *columns, **kwargs): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def add_task(self, description, total): drawn.append(description)
        def advance(self, task, n): pass

    monkeypatch.setattr(console_module, "Progress", Recording)
    monkeypatch.setattr(console_module.console, "_force_terminal", True)
    with console_module.progress_bars_hidden():
        with console_module.progress_bars_hidden(False), console_module.progress_bar("inner", 3) as advance:
            advance()
        with console_module.progress_bar("after", 3):
            pass
    with console_module.progress_bar("outside", 3):
        pass
    assert drawn == ["outside"]


def test_a_progress_line_past_an_hour_shows_hours(monkeypatch, capsys):
    """Elapsed and remaining times of an hour or more read h:mm:ss."""
    monkeypatch.setattr(console_module.console, "_force_terminal", False)
    readings = [0.0, 3725.0]  # start, then the one advance (and the same time for any later reading)
    monkeypatch.setattr(console_module, "time",
                        types.SimpleNamespace(monotonic=lambda: readings.pop(0) if len(readings) > 1 else readings[0]))
    with console_module.progress_bar("reference", 10) as advance:
        advance(2)
    assert capsys.readouterr().err.splitlines() == ["reference: 2/10 (20 %), 1:02:05 elapsed, about 4:08:20 left"]
