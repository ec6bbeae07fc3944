"""One base for every error kseg reports to a user, so each command catches one type and prints one line.

Each error keeps the built-in parent it had before (``ValueError`` for bad inputs, ``RuntimeError`` or
``OSError`` for failures), so library users who caught those still do. ``exit_status`` is what a command
returns for it: 2 when the arguments or inputs are wrong (fix the command line and run again), 1 when the
job itself failed.
"""

from __future__ import annotations

from segio.images import ImageReadError

USAGE = 2
FAILURE = 1
INTERRUPTED = 130


class KsegError(Exception):
    """Something a user can act on; the message names the file, flag or field and what was expected."""

    exit_status = USAGE


class UsageError(KsegError, ValueError):
    """A flag, path or value given to a command cannot be used as it is."""


class ModelArgumentError(KsegError, ValueError):
    """A model builder was asked for something it cannot build (a size, depth, encoder or class count)."""


class OutputDirError(KsegError, OSError):
    """The output directory cannot be written (or has too little space); found before any work starts."""


class TrainingDivergedError(KsegError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_status = FAILURE


#: What a command's ``main`` catches: kseg's own errors and the shared image reader's (``segio`` cannot
#: depend on kseg, so its error is not a ``KsegError`` subclass).
USER_ERRORS = (KsegError, ImageReadError)


def exit_status(error: BaseException) -> int:
    return getattr(error, "exit_status", USAGE)
