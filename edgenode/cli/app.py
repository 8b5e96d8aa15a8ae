"""Registers the commands; each lives in its own module as a function named ``command``."""

from __future__ import annotations

import typer

from edgenode.cli import align, bench, demo, export, infer, parity, split, teacher, teacher_views, train, verify

app = typer.Typer(
    name="edgenode",
    help="Train a Neural-ODE face classifier and take it to an edge device: train → export → infer → parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for name, module in [
    ("demo", demo),
    ("split", split),
    ("train", train),
    ("export", export),
    ("infer", infer),
    ("parity", parity),
    ("verify", verify),
    ("bench", bench),
    ("teacher", teacher),
    ("teacher-views", teacher_views),
    ("align", align),
]:
    app.command(name, help=(module.command.__doc__ or "").strip().splitlines()[0])(module.command)


def main() -> None:
    app()
