"""Assertions shared by several test modules (pytest puts this folder on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import pytest


def one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    """The error is one line (what a CLI user sees) and names every one of ``words``: the file, the value, the fix."""
    text = str(exc.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text
