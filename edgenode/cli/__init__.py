"""The ``edgenode`` command line: one thin typer command per module over the Python API.

Importing the commands imports torch, which takes seconds: :func:`main` does it inside its Ctrl-C handling, so an
early Ctrl-C ends with the one ``error: interrupted`` line like a later one, not with a traceback through torch."""

from __future__ import annotations

import sys



def interrupted_line(argv: list[str]) -> str:
    """What Ctrl-C prints: every file is written whole or not at all; `train` and `demo` also continue a run."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    resume = "; the same command with --resume continues the run" if command == "train" else (
        "; run it again to continue" if command == "demo" else "")
    return f"error: interrupted (what was written stays whole{resume})"


def main(argv: list[str] | None = None) -> None:
    """The ``edgenode`` script (see :func:`edgenode.cli.app.main`)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        from edgenode.cli.app import main as run
    except KeyboardInterrupt:
        print(interrupted_line(argv), file=sys.stderr)
        sys.exit(130)
    run(argv)


def __getattr__(name: str):
    if name == "app":  # the typer app, imported on first use (tests call it through typer's CliRunner)
        from edgenode.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
