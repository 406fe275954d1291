"""One command-line vocabulary for every CLI: the parser, unit-typed flags, ``--json [FILE]``.

Every entry point (``search.run``, ``search.train``, ``search.select``, ``search.info``,
``export.onnx``, ``export.tensorrt``, ``serve.predict``, ``serve.bench``, ``serve.http``)
builds its parser with :func:`parser`, so that:

- a bad flag is one line, ``error: <what> (see <prog> --help)``, and exit status 2;
- ``--help`` shows every flag's default (and the unit, which lives in the help text);
- quantities are read by :mod:`search.core.units` (``5ms``, ``30m``, ``10M``, ``2G``);
- ``--json`` means the same everywhere: print the result as JSON on stdout, or with a
  path, also write it there (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from search.core import units
from search.core.atomic import atomic_write_text
from search.core.errors import NasdeployError

STDOUT = "-"
"""The ``--json`` value that means standard output."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; appends ``(default: X)`` where a default exists."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or "default " in text:
            return text
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return text
        if isinstance(action.default, tuple | list):
            return f"{text} (default: {','.join(str(v) for v in action.default)})"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, description: str, **kwargs: Any) -> Parser:
    """The parser every CLI starts from (``prog`` as the user types it: ``python -m x.y``)."""
    kwargs.setdefault("allow_abbrev", False)  # --batch must never silently mean --batch-sizes
    return Parser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)


def _adapt(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except NasdeployError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


latency_ms = _adapt(units.parse_latency)
"""A latency with its unit (``5ms``, ``800us``, ``0.005s``) -> milliseconds."""
duration_s = _adapt(units.parse_duration)
"""A duration (``90s``, ``30m``, ``1h30m``, ``500ms``; a bare number is seconds) -> seconds."""
count = _adapt(units.parse_count)
"""A count (``600M``, ``1.2G``, ``600000000``) -> int."""
size_bytes = _adapt(units.parse_size)
"""A byte size (``512k``, ``10M``, ``2G``; binary multiples) -> bytes."""


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _float_in(text: str, low: float, high: float, high_open: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (low <= value and (value < high if high_open else value <= high)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _float_in(text, 0.0, 1.0, True, "in [0, 1)")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _float_in(text, 0.0, float("inf"), True, "a finite number >= 0")


def batch_sizes(text: str) -> tuple[int, ...]:
    """A comma-separated list of batch sizes (``1,8,32``), each >= 1."""
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    if not parts:
        raise argparse.ArgumentTypeError(f"no batch size in {text!r}; use e.g. 1,8,32")
    return tuple(positive_int(p) for p in parts)


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json [FILE]``: print ``what`` as JSON on stdout, or also write it to FILE."""
    p.add_argument("--json", nargs="?", const=STDOUT, default=None, metavar="FILE",
                   help=f"print {what} as JSON on stdout instead of text; with FILE, write the JSON "
                        "there (atomically) and keep the text output")


def emit_json(target: str | None, data: Any) -> bool:
    """Write ``data`` for a ``--json`` value; ``True`` when it went to stdout (skip the text).

    The output is strict JSON (RFC 8259): a NaN or infinite number is written as ``null``.

    Raises:
        NasdeployError: FILE is a folder or cannot be written (the message names FILE, never
            the temporary file the atomic write goes through).
    """
    if target is None:
        return False
    text = json.dumps(_strict(data), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"
    if target == STDOUT:
        sys.stdout.write(text)
        return True
    path = Path(target)
    if path.is_dir():
        raise NasdeployError(f"--json {target} is a folder: name a file, e.g. {path / 'result.json'}")
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise NasdeployError(f"cannot write --json {target}: {exc.strerror or type(exc).__name__}") from None
    return False


def _strict(data: Any) -> Any:
    """``data`` with floats as ``float`` and non-finite ones as ``None`` (dicts, lists, tuples walked)."""
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral):  # numpy floats too
        value = float(data)
        return value if math.isfinite(value) else None
    if isinstance(data, dict):
        return {key: _strict(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_strict(value) for value in data]
    return data
