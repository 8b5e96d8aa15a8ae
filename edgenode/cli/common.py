"""What every command shares: turning user errors into one line and an exit code."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.markup import escape

from edgenode.console import console
from edgenode.errors import EdgenodeError


def user_errors(command: Callable) -> Callable:
    """Run ``command``; an :class:`EdgenodeError` becomes ``error: …`` on stderr and its exit code, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgenodeError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper
