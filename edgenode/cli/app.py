"""Registers the commands; each lives in its own module as a function named ``command``."""

from __future__ import annotations

import typer

from edgenode.cli import align, bench, demo, engine, evaluate, export, infer, parity, split, teacher, teacher_views, train, verify
from edgenode.errors import interrupted_line

app = typer.Typer(
    name="edgenode",
    help="Train a Neural-ODE face classifier and take it to an edge device: train → export → infer → parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: rich's option table cut long option names at 80 columns ("--int8-min-agreeme…") and read
    # "[default: …]" in a help text as markup and dropped it; plain text wraps instead, and pipes and logs keep it
    rich_markup_mode=None,
)

for name, module in [
    ("demo", demo),
    ("split", split),
    ("train", train),
    ("export", export),
    ("engine", engine),
    ("infer", infer),
    ("parity", parity),
    ("evaluate", evaluate),
    ("verify", verify),
    ("bench", bench),
    ("teacher", teacher),
    ("teacher-views", teacher_views),
    ("align", align),
]:
    summary = (module.command.__doc__ or "").strip().splitlines()[0]
    # short_help: `edgenode --help` wraps the whole line instead of cutting it at the terminal's width
    app.command(name, help=summary, short_help=summary)(module.command)


def main(argv: list[str] | None = None) -> None:
    """The ``edgenode`` script: the app, with the parser's own errors (a missing argument, an unknown option, ``--steps
    many``) said in one ``error:`` line like every other error, exit 2, instead of a boxed usage message."""
    import sys

    argv = argv if argv is not None else sys.argv[1:]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="edgenode", standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        print(interrupted_line(argv), file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # click's UsageError and ClickException (typer vendors click in its newer releases, so matched by shape)
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `edgenode` alone (or a group): its help, as --help prints it
            print(exc.format_message(), file=sys.stderr)
            sys.exit(exc.exit_code)
        message = " ".join(exc.format_message().split())  # the parser wraps its text over lines
        context = getattr(exc, "ctx", None)
        where = f" (see `{context.command_path} --help`)" if context is not None and exc.exit_code == 2 else ""
        if message:
            print(f"error: {message}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
        print(interrupted_line(argv), file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
