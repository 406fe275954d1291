"""The one exception type that carries a user-facing, one-line message."""

from __future__ import annotations


class NasdeployError(Exception):
    """A problem the user can fix (bad input, missing data or hardware).

    Command-line entry points print ``error: <message>`` and exit with status 2;
    the message must fit on one line and name what to change.
    """


class MeasurementError(NasdeployError):
    """The deployment model of one candidate could not be built, exported or run.

    The search loop records such a candidate as failed and goes on; it lives here so the
    loop can name it without importing a runtime.
    """


def shorten(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about hostile values.

    A huge integer is described by its length (``a 5001-digit number``): its repr could not
    even be built past Python's conversion limit.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, shortened to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


USER_ERRORS: tuple[type[BaseException], ...] = (NasdeployError, OSError)
"""What a command-line entry point reports as one line: our errors, and the file system's
(a missing directory, no permission, a full disk) wherever they surface."""


def format_user_error(exc: BaseException) -> str:
    """One line for a :data:`USER_ERRORS` exception."""
    if isinstance(exc, OSError) and not isinstance(exc, NasdeployError):
        reason = exc.strerror or type(exc).__name__
        return f"{reason}: {exc.filename}" if exc.filename else reason
    return " ".join(str(exc).split())


def report_user_error(exc: BaseException) -> int:
    """Print ``error: <one line>`` on stderr; return the exit status for bad input (2)."""
    import sys

    print(f"error: {format_user_error(exc)}", file=sys.stderr)
    return 2
