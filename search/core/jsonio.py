"""The one JSON reader: every file or string the project reads from outside goes through it.

:func:`loads_json` and :func:`read_json` turn every way a JSON text can be bad into a
:class:`JsonError` with one line naming what was read and why it is unusable: not UTF-8,
a syntax error (with line and column), nesting deeper than ``max_depth`` (checked without
recursion before parsing, so no ``RecursionError`` can escape), more than ``max_bytes``,
NaN/Infinity where the caller forbids them, a top-level value of the wrong type, and a
path that is not a regular file (a FIFO or a device: refused without reading). Stdlib only.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import sys
from typing import Any

from search.core.errors import NasdeployError

MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted; the project's own files stay below 8."""

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""Size limit when the caller names none (16 MiB)."""

# A JSON string (an unterminated one runs to the end) or one bracket; strings are matched so
# that brackets inside them are skipped.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.S)
_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a JSON string",
               int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


class JsonError(NasdeployError, ValueError):
    """A JSON text that cannot be used; ``str()`` is ``"<what> <reason>"`` on one line.

    Also a ``ValueError``, like :class:`json.JSONDecodeError`, so code that treated bad JSON
    as a ``ValueError`` keeps doing so.
    """

    def __init__(self, what: str, reason: str):
        super().__init__(" ".join(f"{what} {reason}".split()))
        self.what = what
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.what, self.reason)


class JsonEncodingError(JsonError):
    """The bytes are not UTF-8 text."""


class JsonSyntaxError(JsonError):
    """Not JSON at all, or JSON cut short."""


class JsonDepthError(JsonError):
    """Arrays/objects nested deeper than the limit."""


class JsonSizeError(JsonError):
    """More bytes than the limit (or than memory allows)."""


class JsonValueError(JsonError):
    """NaN, Infinity or an out-of-range number where the caller forbids them."""


class JsonTypeError(JsonError):
    """The top-level value is not of the type the caller expects."""


class JsonFileError(JsonError):
    """Not a regular file: a FIFO, a device or a socket (read nothing from it)."""


class _Forbidden(Exception):
    """Raised from the parse hooks; turned into :class:`JsonValueError`."""


def read_limited(path: str | os.PathLike[str], what: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the regular file ``path``, refusing files larger than ``max_bytes``.

    The file is opened without blocking, so a FIFO, a device or a socket is refused at
    once (:class:`JsonFileError`) instead of hanging or streaming without end.

    Raises:
        JsonSizeError: The file is larger than ``max_bytes``.
        JsonFileError: Not a regular file (a FIFO, a device, a socket).
        OSError: The file is missing, a directory or unreadable (left to the caller).
    """
    what = str(path) if what is None else what
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise JsonFileError(what, f"is not a regular file ({_file_kind(info.st_mode)}); "
                                      "give a file on disk")
        size = info.st_size
        if size > max_bytes:
            raise JsonSizeError(what, f"is too large ({_mib(size)}; the limit is {_mib(max_bytes)})")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read, or a special file without a size
        raise JsonSizeError(what, f"is too large (over the limit of {_mib(max_bytes)})")
    return data


def read_json(path: str | os.PathLike[str], what: str | None = None, *,
              expect: type | tuple[type, ...] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
              max_depth: int = MAX_DEPTH, allow_nan: bool = False) -> Any:
    """Parse the JSON file ``path``; errors name ``what`` (default: the path).

    Args:
        path: The file.
        what: How error messages name it.
        expect: Required type(s) of the top-level value, e.g. ``dict``.
        max_bytes: Largest file accepted.
        max_depth: Deepest nesting of arrays/objects accepted.
        allow_nan: Accept ``NaN``, ``Infinity`` and numbers that overflow a float.

    Raises:
        JsonError: One of its subclasses, with a one-line message.
        OSError: The file is missing, a directory or unreadable (left to the caller).
    """
    what = str(path) if what is None else what
    data = read_limited(path, what, max_bytes)
    return _parse(_decode(data, what, "is not a text JSON file"), what, expect, max_depth, allow_nan)


def loads_json(text: str | bytes, what: str, *, expect: type | tuple[type, ...] | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = MAX_DEPTH,
               allow_nan: bool = False) -> Any:
    """Parse JSON ``text`` (``bytes`` must be UTF-8); the arguments are as for :func:`read_json`.

    Raises:
        JsonError: One of its subclasses, with a one-line message naming ``what``.
    """
    if len(text) > max_bytes:
        raise JsonSizeError(what, f"is too large ({_mib(len(text))}; the limit is {_mib(max_bytes)})")
    if isinstance(text, (bytes, bytearray)):
        text = _decode(bytes(text), what, "is not text")
    return _parse(text, what, expect, max_depth, allow_nan)


def _decode(data: bytes, what: str, prefix: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        detail = f"invalid UTF-8 byte 0x{byte} at offset {exc.start}"
        raise JsonEncodingError(what, f"{prefix} ({detail})") from None
    except MemoryError:
        raise JsonSizeError(what, "is too large to decode in memory") from None


def _parse(text: str, what: str, expect: type | tuple[type, ...] | None, max_depth: int,
           allow_nan: bool) -> Any:
    if not text.strip():
        raise JsonSyntaxError(what, "is not valid JSON: it is empty")
    _check_depth(text, what, max_depth)
    hooks: dict[str, Any] = {} if allow_nan else {"parse_constant": _no_constant, "parse_float": _finite}
    try:
        value = json.loads(text, **hooks)
    except json.JSONDecodeError as exc:
        raise JsonSyntaxError(what, f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                              ) from None
    except _Forbidden as exc:
        raise JsonValueError(what, f"contains {exc}, which is not allowed here") from None
    except RecursionError:  # only with a recursion limit below max_depth; kept as a guard
        raise JsonDepthError(what, "is nested too deeply to parse") from None
    except MemoryError:
        raise JsonSizeError(what, "is too large to parse in memory") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        if "integer string conversion" in str(exc):
            limit = sys.get_int_max_str_digits()
            raise JsonValueError(what, f"holds an unreadable value: an integer of more than {limit} digits"
                                 ) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise JsonValueError(what, f"holds an unreadable value: {first}") from None
    if expect is not None and not isinstance(value, expect):
        wanted = " or ".join(_type_name(t) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise JsonTypeError(what, f"must hold {wanted}, not {_type_name(type(value))}")
    return value


def _check_depth(text: str, what: str, max_depth: int) -> None:
    """Raise :class:`JsonDepthError` when arrays/objects nest deeper than ``max_depth``."""
    if text.count("[") + text.count("{") <= max_depth:  # cannot be deeper: skip the scan
        return
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                pos = match.start()
                line = text.count("\n", 0, pos) + 1
                column = pos - text.rfind("\n", 0, pos)
                raise JsonDepthError(what, f"is nested deeper than {max_depth} levels "
                                           f"(line {line}, column {column})")
        elif token in ("]", "}"):
            depth = max(depth - 1, 0)  # a stray closer is the parser's to report


def _no_constant(name: str) -> Any:
    raise _Forbidden(name)


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Forbidden(f"the number {literal[:40]} (out of range for a float)")
    return value


def _type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"


# --- checking a JSON object against a dataclass's field annotations -------------------------

_ANNOTATION_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "None": (type(None),),
    "list": (list,), "dict": (dict,)}
_ANNOTATION_WORDS = {"str": "a string", "int": "a whole number", "float": "a number",
                     "bool": "true or false", "None": "null", "list": "a list", "dict": "an object"}


def _annotation_kinds(annotation: str) -> list[str]:
    return [part.strip().split("[")[0] for part in annotation.split("|")]


def fits_annotation(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``"float | None"``, ``"dict[str, Any]"``...

    ``true``/``false`` fit only ``bool`` (not ``int``); an integer fits ``float``.
    """
    for kind in _annotation_kinds(annotation):
        if isinstance(value, bool) and kind != "bool":
            continue
        if isinstance(value, _ANNOTATION_TYPES.get(kind, ())):
            return True
    return False


def annotation_words(annotation: str) -> str:
    """``"a number or null"`` for ``"float | None"``: what a field takes, for messages."""
    return " or ".join(_ANNOTATION_WORDS.get(kind, kind) for kind in _annotation_kinds(annotation))

