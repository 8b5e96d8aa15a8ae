"""What every command shares: turning user errors into one line and an exit code, and checking path arguments.

Exit codes: 0 success; 1 the command line is right but what it names is unusable (a damaged or mismatched
artifact, undecodable data, a numeric or parity failure, a file-system error); 2 the command line is wrong
(a bad value, a path that does not exist, a file of the wrong kind for its argument). See
:mod:`edgenode.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape

from edgenode.console import console
from edgenode.errors import EdgenodeError, PathArgumentError


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show edgenode's own warnings (a skipped file, an excluded identity) as ``warning: …``, one line each.

    Python's default format adds the source line of the ``warnings.warn`` call; a user wants the message.
    Other libraries' warnings keep their usual handling.
    """
    from edgenode.data import DataWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            console.print(f"[bold yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)  # every skipped file gets its line, not only the first
        warnings.showwarning = show
        yield


def user_errors(command: Callable) -> Callable:
    """Run ``command``; an :class:`EdgenodeError` becomes ``error: …`` on stderr and its exit code, no traceback.

    A file-system error (disk full, permission denied, a file where a folder is needed) is the user's to fix
    too: one line naming the path, exit 1.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _one_line_warnings():
                return command(*args, **kwargs)
        except EdgenodeError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a path the user gave: a bug, keep the traceback
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
            console.print(f"[bold red]error:[/] {escape(where)}: {escape(exc.strerror or str(exc))}", soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper


def existing_path(path: Path, option: str, *, folder: bool | None = None) -> Path:
    """``path`` must exist (and be a folder / a file when ``folder`` says so), else exit 2 naming ``option``."""
    if not path.exists():
        raise PathArgumentError(f"{option} {path}: {'folder' if folder else 'file' if folder is False else 'path'} not found")
    if folder is True and not path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a file, not a folder")
    if folder is False and path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a folder, not a file")
    return path


def output_folder(path: Path, option: str = "--out") -> Path:
    """An output folder may not exist yet, but must not be a file (exit 2 before any work is done)."""
    if path.exists() and not path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a file, not a folder", "pass a folder to write into")
    return path


def output_file(path: Path, option: str = "--out") -> Path:
    """An output file may not exist yet, but must not be a folder."""
    if path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a folder, not a file", "pass the file name to write")
    return path


def manifest_files(data: Path, manifest: Optional[Path], per_identity: int) -> list[str]:
    """Every image under DATA, or the files a manifest names (splits + unused), optionally the first N per identity.

    What `edgenode teacher` describes and `edgenode align` aligns: both work on whole data sets, pool included.
    """
    from edgenode.data import SPLITS, Manifest, discover_images, images_root
    from edgenode.errors import DataError

    if manifest is None:
        groups = list(discover_images(data).values())
    else:
        loaded = Manifest.load(existing_path(manifest, "--manifest", folder=False))
        named = sorted({f for split in SPLITS for f in loaded.files(split)} | {f for f, _ in loaded.unused})
        base = images_root(data)
        missing = [f for f in named if not (base / f).is_file()]
        if missing:
            raise DataError(f"--manifest {manifest} names {len(missing)} file(s) not found under {base} "
                            f"(first: {missing[0]})", "pass the data folder the manifest was built from")
        by_identity: dict[str, list[str]] = {}
        for f in named:
            by_identity.setdefault(f.split("/", 1)[0], []).append(f)
        groups = list(by_identity.values())
    return [f for group in groups for f in (group[:per_identity] if per_identity else group)]
