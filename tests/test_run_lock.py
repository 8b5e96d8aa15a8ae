"""Each command that writes into a folder over minutes holds a lock of its own kind, and runs unlocked where the
file system cannot lock."""

import errno
import os

import pytest

from edgenode import run_lock
from edgenode.errors import UsageError

fcntl = pytest.importorskip("fcntl")  # POSIX advisory locks; elsewhere runs are not locked


def test_align_and_train_hold_locks_of_their_own(tmp_path):
    """``.align.lock`` keeps a second align out, not a train run (which holds ``.train.lock``)."""
    folder = tmp_path / "out"
    with run_lock.hold_run_folder(folder, command="align"):
        assert (folder / ".align.lock").read_text() == str(os.getpid())
        assert not (folder / run_lock.LOCK_NAME).exists()
        with run_lock.hold_run_folder(folder):  # another kind of writer: not refused
            assert (folder / run_lock.LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(UsageError, match=rf"--out {folder} is in use by another edgenode align \(process {os.getpid()}\)"):
            with run_lock.hold_run_folder(folder, command="align"):
                pass
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_a_file_system_that_cannot_lock_runs_unlocked_and_leaves_no_lock_file(tmp_path, monkeypatch, code):
    """Some network mounts refuse flock (NFS without a lock daemon says ENOLCK): the run goes on as before, unlocked."""
    def refused(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refused)
    ran = []
    with run_lock.hold_run_folder(tmp_path / "out"):
        ran.append(True)
        assert not (tmp_path / "out" / run_lock.LOCK_NAME).exists()
    assert ran == [True]


def test_another_lock_error_is_raised_not_ignored(tmp_path, monkeypatch):
    def refused(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", refused)
    with pytest.raises(OSError) as exc:
        with run_lock.hold_run_folder(tmp_path / "out"):
            pytest.fail("ran without its lock")
    assert exc.value.errno == errno.EIO


def test_a_process_that_does_not_write_the_run_takes_no_lock(tmp_path):
    """Training's other ranks (enabled=False) share rank 0's --out: they neither wait for its lock nor are refused."""
    folder = tmp_path / "out"
    with run_lock.hold_run_folder(folder):
        with run_lock.hold_run_folder(folder, enabled=False):
            assert (folder / run_lock.LOCK_NAME).read_text() == str(os.getpid())  # rank 0's, untouched
    assert not (folder / run_lock.LOCK_NAME).exists()
