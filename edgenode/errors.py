"""One exception family for mistakes a user can fix.

The CLI turns an :class:`EdgenodeError` into one line on stderr and exit code 1 (2 for
:class:`UsageError`) with no traceback. Anything else is a bug and keeps its traceback.

Exit 2 means "the command line is wrong": a bad value, a path that does not exist, or a file of the wrong
kind for its argument (a checkpoint where an ONNX file is expected, an image where a model is expected).
Exit 1 means "the command line is right but the thing it names is not usable": a damaged, tampered or
mismatched file, undecodable data, a numeric or parity failure, or an optional extra this machine lacks.
"""

from __future__ import annotations


class EdgenodeError(Exception):
    """A user-facing error: what went wrong (naming the file and the value) and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgenodeError):
    """A bad command-line argument or configuration value."""

    exit_code = 2


class DataError(EdgenodeError):
    """The data set on disk cannot be used as asked (too few images, no identities, ...)."""


class PathArgumentError(UsageError):
    """A path argument that does not exist, or names the wrong kind of file or folder for its role (exit 2)."""


class ImageDecodeError(DataError):
    """One image file cannot be read as a picture; callers skip it and report the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # rebuilt from both arguments when it crosses a process pool
        return type(self), (self.path, self.reason)


class ArtifactError(EdgenodeError):
    """A checkpoint, ONNX file or engine is missing, tampered with, or of the wrong kind."""


class ArtifactPathError(PathArgumentError, ArtifactError):
    """An artifact path that does not exist or is of the wrong kind: exit 2, and still an ArtifactError."""


class DataPathError(PathArgumentError, DataError):
    """A data path (root folder, manifest) that does not exist or is of the wrong kind: exit 2, still a DataError."""


class NumericError(EdgenodeError):
    """A model produced inf/NaN or saturated outputs."""


class MissingDependencyError(EdgenodeError):
    """An optional extra the command needs is not installed here (dlib, an ONNX Runtime execution provider,
    TensorRT): exit 1, as for any command line that is right but asks for what this machine cannot provide; the hint
    says what to install."""


class ParityError(EdgenodeError):
    """A deployed artifact does not reproduce the reference model within the thresholds."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a foreign exception's message (its type's name when it has none), at most ``limit``
    characters: how a library's multi-line error enters one of ours. A longer line loses its middle, not its
    end: a C++ library's message starts with where it was raised and ends with why (ONNX Runtime's
    ``... model.cc:202 onnxruntime::Model::Model(<a long signature>) Unsupported model IR version: ...``)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if len(line) <= limit:
        return line
    head = (limit - 1) // 2
    return line[:head] + "…" + line[len(line) - (limit - 1 - head):]


def is_whole_number(value: object, low: int = 1) -> bool:
    """``value`` is an int (not a bool, which Python counts as one) and at least ``low``: the test behind every
    count-like option; each caller keeps its own message."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def reraise_interrupt(exc: BaseException) -> None:
    """Raise KeyboardInterrupt when ``exc`` was caused by one: ``torch.onnx`` catches Ctrl-C inside its exporter and
    raises its own error instead, which a fallback to the next exporter would otherwise swallow (the export then
    went on, and wrote other files than the first exporter would have)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def interrupted_line(argv: list[str]) -> str:
    """What the ``edgenode`` script prints on Ctrl-C: every file is written whole or not at all, and where the
    command can continue (``train --resume``; ``demo`` and ``align``, which keep what they finished, run again) it
    says how."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    resume = "; the same command with --resume continues the run" if command == "train" else (
        "; run it again to continue" if command in ("demo", "align") else "")
    return f"error: interrupted (what was written stays whole{resume})"
