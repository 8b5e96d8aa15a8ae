"""``python -m edgenode`` and the ``edgenode`` script.

The commands import torch, which takes seconds. A Ctrl-C then raised KeyboardInterrupt inside the import: a
traceback through torch, or, landing in its C++ extension's start-up, an abort ("terminate called after throwing an
instance of 'pybind11::error_already_set'"). So the import runs with Ctrl-C only noted, and a noted Ctrl-C ends
the command with its one ``error: interrupted`` line as soon as the import is done, like a later one."""

import signal
import sys


def main() -> None:
    from edgenode.errors import interrupted_line

    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        from edgenode.cli.app import main as run
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)  # None: set outside Python
    if noted:
        print(interrupted_line(sys.argv[1:]), file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
