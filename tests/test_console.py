"""Progress output: bars on a terminal and their hiding (which nests), and progress lines off a terminal,
hours included."""

from __future__ import annotations

import types

import pytest

from edgenode import console as console_module


@pytest.fixture
def drawn(monkeypatch) -> list[str]:
    """On a terminal, the descriptions of the bars drawn, in order (a stand-in for rich's Progress records them)."""
    descriptions: list[str] = []

    class Recording:
        def __init__(self, *columns, **kwargs): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def add_task(self, description, total): descriptions.append(description)
        def advance(self, task, n): pass

    monkeypatch.setattr(console_module, "Progress", Recording)
    monkeypatch.setattr(console_module.console, "_force_terminal", True)
    return descriptions


def test_a_nested_progress_bars_hidden_false_keeps_the_outer_hiding(drawn):
    """Inside `demo --no-progress` (bars hidden), a stage that says "not hidden" for itself still draws nothing."""
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


def test_progress_bars_hidden_silences_every_bar_on_a_terminal(drawn):
    """`demo --no-progress` hides export's and parity's bars too, which have no option of their own."""
    with console_module.progress_bar("shown", 3) as advance:
        advance()
    with console_module.progress_bars_hidden(), console_module.progress_bar("hidden", 3) as advance:
        advance()
    with console_module.progress_bars_hidden(False), console_module.progress_bar("not hidden", 3):
        pass
    assert drawn == ["shown", "not hidden"]


def test_off_a_terminal_a_long_bar_is_a_progress_line_now_and_then(monkeypatch, capsys):
    """A log (nohup, CI) gets no bar; minutes of parity's dopri5 reference or of a CPU epoch must still say they
    are alive, at most every LOG_EVERY_SECONDS, and short work says nothing."""
    monkeypatch.setattr(console_module.console, "_force_terminal", False)
    clock = iter([0.0, 10.0, 40.0, 50.0, 75.0, 200.0])  # start, then one reading per advance
    monkeypatch.setattr(console_module, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))  # its clock only
    with console_module.progress_bar("dopri5 reference", 10) as advance:
        for _ in range(5):
            advance(2)
    lines = capsys.readouterr().err.splitlines()
    # 10 s: too soon; 40 s: a line; 50 s: too soon after it; 75 s: a line; 200 s: finished, nothing to add
    assert lines == ["dopri5 reference: 4/10 (40 %), 0:40 elapsed, about 1:00 left",
                     "dopri5 reference: 8/10 (80 %), 1:15 elapsed, about 0:19 left"], lines
    with console_module.progress_bars_hidden(), console_module.progress_bar("hidden", 10) as advance:
        advance(1)
    with console_module.progress_bar("disabled", 10, enabled=False) as advance:
        advance(1)
    assert capsys.readouterr().err == ""
