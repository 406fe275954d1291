"""The one exception type that carries a user-facing, one-line message."""

from __future__ import annotations


class NasdeployError(Exception):
    """A problem the user can fix (bad input, missing data or hardware).

    Command-line entry points print ``error: <message>`` and exit with status 2;
    the message must fit on one line and name what to change.
    """
