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


def whole_files(folder) -> list[str]:
    """Every file under a final (non-hidden) name in ``folder`` is complete: checkpoints load, JSON parses, CSV rows
    are whole and PNGs decode. Returns the hidden names (temporaries, locks), sorted, for the caller to judge."""
    import csv
    import json
    from pathlib import Path

    from PIL import Image

    from edgenode.checkpoint import load_checkpoint

    hidden = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith("."):
            hidden.append(path.name)
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            rows = list(csv.DictReader(path.open()))
            assert rows and all(None not in row and None not in row.values() and row["seconds"] for row in rows), path
            assert rows[-1]["epoch"].isdigit(), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
    return hidden
