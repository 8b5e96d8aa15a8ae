"""The ``edgenode`` command line: one thin typer command per module over the Python API."""

from edgenode.cli.app import app, main

__all__ = ["app", "main"]
