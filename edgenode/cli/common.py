"""What every command shares: turning user errors into one line and an exit code, and checking path arguments.

Exit codes: 0 success; 1 the command line is right but what it names is unusable (a damaged or mismatched
artifact, undecodable data, a numeric or parity failure, a file-system error); 2 the command line is wrong
(a bad value, a path that does not exist, a file of the wrong kind for its argument). See
:mod:`edgenode.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape

from edgenode.artifacts import describe_file, file_kind
from edgenode.console import console
from edgenode.errors import EdgenodeError, PathArgumentError
from edgenode.runtime.providers import ONNXRUNTIME_MISSING


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show edgenode's own warnings (a skipped file, an excluded identity) as ``warning: …``, one line each.

    Python's default format adds the source line of the ``warnings.warn`` call; a user wants the message.
    Other libraries' warnings keep their usual handling, but for Pillow's decompression-bomb warning, which
    edgenode's decoder makes redundant (``decode.ignore_bomb_warning``).
    """
    from edgenode.data import DataWarning
    from edgenode.data.decode import ignore_bomb_warning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            console.print(f"[bold yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)  # every skipped file gets its line, not only the first
        ignore_bomb_warning()
        warnings.showwarning = show
        yield


def user_errors(command: Callable) -> Callable:
    """Run ``command``; an :class:`EdgenodeError` becomes ``error: …`` on stderr and its exit code, no traceback.

    ONNX Runtime is an extra (its CPU and GPU builds cannot be installed together), so its absence is a
    one-line install hint, exit 1. A file-system error (disk full, permission denied) is the user's to fix
    too: one line naming the path, exit 1; a file where a folder is needed is a path of the wrong kind,
    exit 2 (:func:`os_error_line`).
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _one_line_warnings():
                return command(*args, **kwargs)
        except EdgenodeError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "onnxruntime":
                raise  # any other missing module is a broken install or a bug: keep the traceback
            console.print(f"[bold red]error:[/] {escape(ONNXRUNTIME_MISSING)}", soft_wrap=True)
            raise typer.Exit(code=1) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a path the user gave: a bug, keep the traceback
            line, code = os_error_line(exc)
            console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(code=code) from None

    return wrapper


def os_error_line(exc: OSError) -> tuple[str, int]:
    """The one line (and exit code) for a file-system error that names a path.

    A file standing where a folder must be (``mkdir`` says "File exists", ``open`` "Not a directory", naming
    the path asked for rather than the file in the way) is a path of the wrong kind: exit 2, naming that file.
    Anything else (disk full, permission denied) keeps the system's words: exit 1.
    """
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and isinstance(exc.filename, (str, bytes, os.PathLike)):
        blocker = file_in_the_way(Path(os.fsdecode(exc.filename)))
        if blocker is not None:
            return f"{blocker} is a file, not a folder (pass a folder path)", 2
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return f"{where}: {exc.strerror or exc}", 1


def existing_path(path: Path, option: str, *, folder: bool | None = None) -> Path:
    """``path`` must exist (and be a folder / a file when ``folder`` says so), else exit 2 naming ``option``."""
    if not path.exists():
        raise PathArgumentError(f"{option} {path}: {'folder' if folder else 'file' if folder is False else 'path'} not found",
                                f"check it (a relative path starts at {Path.cwd()})")
    if folder is True and not path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a file, not a folder", f"pass the folder {option} names")
    if folder is False and path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a folder, not a file", f"pass the file {option} names, inside it")
    return path


def file_in_the_way(path: Path) -> Optional[Path]:
    """The file that stands where ``path`` or one of its parent folders must be, if any.

    Writing under it fails only once the command gets there (often after all the work) and the system then
    names the wrong path ("afile/sub: Not a directory"); looking up the nearest existing ancestor finds it first.
    """
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def output_folder(path: Path, option: str = "--out") -> Path:
    """An output folder may not exist yet, but neither it nor a parent may be a file (exit 2 before any work)."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        where = "is a file" if blocker == path else f"{blocker} is a file"
        raise PathArgumentError(f"{option} {path}: {where}, not a folder", "pass a folder path")
    require_writable(path, option)
    return path


def require_writable(path: Path, option: str) -> None:
    """Refuse, before any work, an output under a folder this process cannot write in (a read-only mount, another
    user's folder); the first write would fail only after the work, minutes later for an export."""
    existing = next((p for p in (path, *path.parents) if p.is_dir()), None)  # where the first folder or file goes
    if existing is None:
        return
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EdgenodeError(f"{option} {path}: cannot write in {existing} (permission denied, or a read-only file "
                            "system)", f"pass an {option} you can write to")
    try:  # access() answers yes to root everywhere, and for folders that take no files (/proc, /sys): try one
        fd, probe = tempfile.mkstemp(prefix=".edgenode-probe-", dir=existing)
    except OSError as exc:
        raise EdgenodeError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc})",
                            f"pass an {option} you can write to") from None
    os.close(fd)
    os.unlink(probe)


def output_file(path: Path, option: str = "--out", *, kind: Optional[str] = None,
                is_kind: Optional[Callable[[Path], bool]] = None) -> Path:
    """An output file may not exist yet, but must not be a folder nor sit under a file.

    With ``is_kind``, an existing file is replaced only when it is of that ``kind`` (re-running a command over
    its own output is normal; turning a checkpoint into a manifest loses it) or empty (nothing to lose).
    """
    if path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a folder, not a file", "pass the file name to write")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise PathArgumentError(f"{option} {path}: {blocker} is a file, not a folder", "pass a path inside a folder")
    require_writable(path, option)
    if is_kind is not None and path.is_file() and file_kind(path) != "empty" and not is_kind(path):
        raise PathArgumentError(f"{option} {path}: already exists and is {describe_file(path)}, not {kind}",
                                f"pass another {option}, or delete {path} to replace it")
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
