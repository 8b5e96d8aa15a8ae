"""One training run (or one ``align``) per ``--out`` at a time.

Two ``edgenode train`` processes writing into one folder interleave their files: one run's ``best.pt`` beside
the other's ``last.pt`` and ``results.json``, each self-consistent and together wrong. The first process to start
holds an advisory lock on ``<out>/.train.lock`` for as long as it runs; a second one is refused in one line that
names the holder. The operating system releases the lock when the holder dies, so a killed run never leaves a
stale lock behind (the file is removed when the run ends; one left by a kill is simply taken again). ``align``
holds ``<out>/.align.lock`` the same way: a second one would remove the first one's chips in flight.

Advisory locking is POSIX ``flock``; where it is missing (Windows), or a file system refuses it (some network
mounts), runs are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from edgenode.errors import UsageError

LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def hold_run_folder(run_dir: Path, enabled: bool = True, command: str = "train") -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs (creating the folder); refuse if another process holds it.

    ``command`` names the writer and its lock file (``.train.lock``, ``.align.lock``): each command that writes into
    a folder over minutes keeps others of its kind out."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        fcntl = None
    if not enabled or fcntl is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / (LOCK_NAME if command == "train" else f".{command}.lock")
    handle = _locked(fcntl, path, run_dir, command)
    if handle is None:  # a file system that does not lock (some network mounts): run as before, unlocked
        yield
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # before the release: a process that opened this file then finds it gone (_locked)
    finally:
        handle.close()


def _locked(fcntl, path: Path, run_dir: Path, command: str = "train"):
    """The lock file, open and locked by this process; None where the file system cannot lock.

    A holder removes the file before it releases it, so a process that opened the file just before that would lock
    a file no longer in the folder while a third one creates and locks a new one: the lock is taken only on the file
    that is in the folder now, else tried again."""
    for _ in range(100):
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(f"--out {run_dir} is in use by another edgenode {command} (process {holder})",
                             f"wait for it to finish, or {command} into another --out") from None
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                with contextlib.suppress(OSError):  # no process can lock it here: leave no file behind either
                    path.unlink()
                return None
            raise
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        except OSError:
            handle.close()
            raise
        handle.close()  # the holder removed it on its way out: lock the file in the folder now
    raise UsageError(f"--out {run_dir}: could not take its lock ({path} keeps being replaced)", "try again")
