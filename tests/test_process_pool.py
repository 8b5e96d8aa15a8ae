"""Worker processes: a worker that dies is one clear error, and Ctrl-C handling is given back as it was."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import no_setup

from edgenode.errors import EdgenodeError
from edgenode.process_pool import ctrl_c_ignored, process_map


def test_a_worker_that_dies_is_one_error_naming_what_to_do(tmp_path):
    """A worker killed mid-task (out of memory, here os._exit) breaks the pool: that is an EdgenodeError saying how
    far it got and how to see the error, not concurrent.futures' BrokenProcessPool."""
    with pytest.raises(EdgenodeError, match=r"a worker process \(dying\) stopped abruptly after 0 of 2 items") as info:
        process_map(os._exit, [3, 3], initializer=no_setup, initargs=(), workers=2, description="dying",
                    progress=False, chunksize=1, rerun_hint="rerunning keeps what was done; ")
    assert info.value.hint.startswith("rerunning keeps what was done; guard the script's entry point")


def test_ctrl_c_ignored_gives_back_the_handler_it_found():
    """SIGINT is ignored inside the block; after it, the handler that was there before (here a custom one, or an
    ignored SIGINT) is back, not Python's default."""
    def custom(signum, frame):  # pragma: no cover - never delivered
        pass

    before = signal.getsignal(signal.SIGINT)
    try:
        for handler in (custom, signal.SIG_IGN, signal.default_int_handler):
            signal.signal(signal.SIGINT, handler)
            with ctrl_c_ignored():
                assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, before)
