"""`edgenode export` (placeholder until the module lands)."""

import typer


def command() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=1)
