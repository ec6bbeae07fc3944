"""What every ``python -m kseg.*`` command does the same way: logging to the terminal, one-line errors with
the command's name, exit statuses (0 done, 1 the job failed, 2 wrong arguments or inputs, 130 interrupted)
and Ctrl-C.

Library modules raise ``kseg.core.errors.KsegError`` (and the image reader's ``ImageReadError``) and log through
``logging``; only commands print. A command's ``main(argv)`` calls ``run(prog, body, argv)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from kseg.core import errors


class _CommandFormatter(logging.Formatter):
    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{self.prog}: {record.levelname.lower()}: {message}"
        return f"{self.prog}: {message}"


#: Loggers whose messages a command shows: kseg's and those of the two packages it builds on.
LOGGERS = ("kseg", "tfds_ph2", "segio")


class _DropKnownNoise(logging.Filter):
    """Warnings that say nothing a kseg user can act on: Apache Beam's (imported by TFDS) about optional
    Google Cloud clients."""

    NOISE = ("apitools not found",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.NOISE)


def add_verbose_flag(parser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's, TFDS's and absl's own log lines and warnings (hidden by default; "
        "TF_CPP_MIN_LOG_LEVEL=0 does the same for TensorFlow's C++ lines)",
    )


def quiet_libraries() -> None:
    """Hide the libraries' own chatter (kseg's lines and real errors stay): TensorFlow's and absl's Python
    loggers show errors only, and known noise is dropped."""
    for name in ("tensorflow", "absl", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropKnownNoise) for f in root.filters):
        root.addFilter(_DropKnownNoise())


def setup_logging(prog: str, verbose: bool = False) -> None:
    """Library messages to the terminal as ``prog: message``: INFO to stdout, warnings and errors to stderr;
    other libraries' chatter hidden unless ``verbose``."""
    if not verbose:
        quiet_libraries()
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    warn = logging.StreamHandler(sys.stderr)
    warn.setLevel(logging.WARNING)
    for handler in (info, warn):
        handler.setFormatter(_CommandFormatter(prog))
        handler.kseg_command = True
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "kseg_command", False)] + [info, warn]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def fail(prog: str, message: str, status: int = errors.USAGE) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def run(
    prog: str,
    body: Callable[[], int | None],
    interrupted: Callable[[], str] | None = None,
    verbose: bool | None = None,
) -> int:
    """Run a command's work: its exit status, a one-line error for a user error, and one line on Ctrl-C
    (``interrupted()`` says what was kept and how to go on). ``verbose`` defaults to whether ``--verbose`` is
    on the command line."""
    setup_logging(prog, "--verbose" in sys.argv[1:] if verbose is None else verbose)
    try:
        status = body()
    except errors.USER_ERRORS as e:
        return fail(prog, str(e), errors.exit_status(e))
    except KeyboardInterrupt:
        detail = interrupted() if interrupted else "nothing half-written was left behind"
        print(f"\n{prog}: interrupted; {detail}", file=sys.stderr)
        return errors.INTERRUPTED
    return 0 if status is None else status


def progress_bar(total: int):
    """A per-image progress callback drawing Keras' bar when stdout is a terminal; None otherwise (in a log
    file a redrawn bar is a smear of half lines; the closing line says what was done)."""
    if not total or not sys.stdout.isatty():
        return None
    import keras

    return keras.utils.Progbar(total, unit_name="image").update


def report_written(prog: str, written: int, total: int, errors: list[str], where, detail: str = "") -> int:
    """The closing lines of a command that writes one output per input file: each problem by name, then the
    count; exit 1 if any input failed (or none was written), else 0."""
    for error in errors:
        print(f"{prog}: skipped {error}", file=sys.stderr)
    print(
        f"{prog}: {written} of {total} images written to {where}{f' ({detail})' if detail else ''}; "
        f"{len(errors)} problem(s)",
        file=sys.stderr,
    )
    return 1 if errors or not written else 0


def outputs_kept(where) -> str:
    """What an interrupted predict or client run leaves: whole files only (they are written atomically)."""
    return f"the masks and overlays already in {where} are complete (none is half-written); run again to do them all"
