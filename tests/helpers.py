"""Assertions shared by several test modules (pytest puts this folder on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import pytest


def one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    """The error is one line (what a CLI user sees) and names every one of ``words``: the file, the value, the fix."""
    text = str(exc.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text


def no_setup() -> None:
    """An initializer for ``process_map`` that sets nothing up."""


def read_under_a_tiny_pillow_limit(path: str) -> tuple[int, int]:
    """``load_rgb(path).size`` in a worker process, with Pillow's limit lowered so that a small picture warns."""
    from PIL import Image

    from edgenode.data import load_rgb  # imported first: importing it sets the limit

    Image.MAX_IMAGE_PIXELS = 200  # a 16 x 16 picture (256 pixels): Pillow's warning, not yet its error
    return load_rgb(path).size


def mark_then_wait(marker: str, seconds: float = 1.0) -> str:
    """A slow ``process_map`` item, or a slow worker start-up (dlib loads its models): creates the file ``marker``,
    so that a test sees where the worker is, then sleeps."""
    import time
    from pathlib import Path

    Path(marker).touch()
    time.sleep(seconds)
    return marker


def mark_then_wait_in_a_new_file(folder: str) -> None:
    """A slow ``process_map`` initializer: :func:`mark_then_wait` on a file of ``folder`` named after the worker."""
    import os

    mark_then_wait(os.path.join(folder, f"worker-{os.getpid()}"))
